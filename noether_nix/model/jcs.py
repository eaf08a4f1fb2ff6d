"""Canonical JSON encodings, byte-compatible with upstream noether.

Upstream hashes with three encodings (spec §0):

* ``jcs``: serde_jcs 0.1 — no whitespace, ECMAScript number form,
  object members sorted by the UTF-8 bytes of the *escaped, quoted* key.
  Used for StageId, SignatureId and composition IDs.
* ``serde_compact``: serde_json::to_vec — no whitespace, ryu number form
  (``1.0``, ``1e16``). Used for trace hashes, the pure-cache key, the
  stdin of subprocess stages and legacy v0 IDs.

Values are plain Python JSON values (dict / list / str / int / float /
bool / None), as produced by ``msgspec.json.decode``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from noether_nix.errors import NoetherError

_I64_MIN = -(2**63)
_U64_MAX = 2**64 - 1


_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f]')


def _quote(s: str) -> str:
    # json.dumps escapes exactly what serde_json escapes: '"', '\\' and
    # control characters below 0x20 (short forms or lowercase \u00xx).
    # Most strings need none of that: skip json.dumps for them.
    if _NEEDS_ESCAPE.search(s) is None:
        return f'"{s}"'
    return json.dumps(s, ensure_ascii=False)


def _digits_exponent(x: float) -> tuple[str, int]:
    """Shortest round-trip digits ``d`` and ``n`` with ``x == 0.d × 10**n``."""
    sign, digits, exp = Decimal(repr(x)).as_tuple()
    ds = "".join(map(str, digits)).rstrip("0") or "0"
    # value = int(all digits) × 10**exp; stripping trailing zeros moves exp.
    assert isinstance(exp, int)
    exp += len(digits) - len(ds)
    return ds, exp + len(ds)


def ecmascript_number(x: float) -> str:
    """``Number.prototype.toString`` for a finite double (what ryu-js prints)."""
    if math.isnan(x) or math.isinf(x):
        raise NoetherError("non_finite_number", "NaN and Infinity cannot be encoded as JSON")
    if x == 0:
        return "0"
    neg = x < 0
    ds, n = _digits_exponent(abs(x))
    k = len(ds)
    if k <= n <= 21:
        out = ds + "0" * (n - k)
    elif 0 < n <= 21:
        out = ds[:n] + "." + ds[n:]
    elif -6 < n <= 0:
        out = "0." + "0" * (-n) + ds
    else:
        e = n - 1
        mant = ds if k == 1 else ds[0] + "." + ds[1:]
        out = f"{mant}e{'+' if e > 0 else '-'}{abs(e)}"
    return "-" + out if neg else out


def ryu_number(x: float) -> str:
    """serde_json's float form (ryu ``format64``): ``1.0``, ``1e16``, ``1e-7``."""
    if math.isnan(x) or math.isinf(x):
        # serde_json writes non-finite floats as null.
        return "null"
    if x == 0:
        return "-0.0" if math.copysign(1.0, x) < 0 else "0.0"
    neg = x < 0
    ds, kk = _digits_exponent(abs(x))
    length = len(ds)
    k = kk - length
    if k >= 0 and kk <= 16:
        out = ds + "0" * k + ".0"
    elif 0 < kk <= 16:
        out = ds[:kk] + "." + ds[kk:]
    elif -5 < kk <= 0:
        out = "0." + "0" * (-kk) + ds
    else:
        e = kk - 1
        mant = ds if length == 1 else ds[0] + "." + ds[1:]
        out = f"{mant}e{e}"
    return "-" + out if neg else out


def _encode(v: Any, out: list[str], number: Callable[[float], str], order: Callable[[str], bytes] | None) -> None:
    """Compact JSON; ``number`` formats doubles, ``order`` sorts object keys (None keeps insertion order)."""
    if v is None:
        out.append("null")
    elif v is True:
        out.append("true")
    elif v is False:
        out.append("false")
    elif isinstance(v, int):
        # Outside i64/u64 serde_json parses the literal as f64.
        out.append(str(v) if _I64_MIN <= v <= _U64_MAX else number(float(v)))
    elif isinstance(v, float):
        out.append(number(v))
    elif isinstance(v, str):
        out.append(_quote(v))
    elif isinstance(v, (list, tuple)):
        out.append("[")
        for i, item in enumerate(v):
            if i:
                out.append(",")
            _encode(item, out, number, order)
        out.append("]")
    elif isinstance(v, dict):
        keys = sorted(v, key=order) if order is not None else list(v)
        out.append("{")
        for i, k in enumerate(keys):
            if i:
                out.append(",")
            out.append(_quote(k))
            out.append(":")
            _encode(v[k], out, number, order)
        out.append("}")
    else:
        raise TypeError(f"not a JSON value: {type(v).__name__}")


def _jcs_key(k: str) -> bytes:
    # serde_jcs orders members by the bytes of the escaped, quoted key.
    return _quote(k).encode()


def _plain_key(k: str) -> bytes:
    return k.encode()


def jcs(value: Any) -> bytes:
    """Canonical bytes as upstream's serde_jcs produces them."""
    out: list[str] = []
    _encode(value, out, ecmascript_number, _jcs_key)
    return "".join(out).encode("utf-8")


def serde_compact(value: Any, *, sort_keys: bool = True) -> bytes:
    """serde_json::to_vec of a value.

    ``sort_keys=True`` matches ``serde_json::Value`` (BTreeMap) objects;
    ``False`` keeps dict insertion order, for Rust structs whose field
    order the caller has reproduced.
    """
    if type(value) is str:  # the commonest stage value, hashed twice per stage call
        return _quote(value).encode("utf-8")
    out: list[str] = []
    _encode(value, out, ryu_number, _plain_key if sort_keys else None)
    return "".join(out).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def value_hash(value: Any) -> str:
    """Upstream's ``hash_value``: sha256 of the serde-compact form."""
    return sha256_hex(serde_compact(value))
