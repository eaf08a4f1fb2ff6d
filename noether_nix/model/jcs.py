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
import sys
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import msgspec

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


_LEAVES = frozenset({str, bool, type(None)})
_CONTAINERS = frozenset({list, dict})
#: msgspec's encoder with sorted keys writes a ``_plain`` value byte for byte as serde_json
#: does (the same short escapes, other control characters as lowercase ``\u00XX``, nothing
#: else escaped, keys in code point order), straight to UTF-8: ~10× faster than the stdlib's
#: C encoder plus ``str.encode`` (100,000 short texts: 0.7 ms against 6.7 ms).
_C_ENCODE = msgspec.json.Encoder(order="sorted").encode


def _plain(v: Any, depth: int = 0) -> bool:
    """Whether ``v`` holds nothing but lists, dicts with text keys, text, booleans, null and
    integers serde_json reads as integers: then the C encoder writes exactly the serde-compact
    form (same escapes, keys in code point order = UTF-8 byte order), container by container
    checked, not value by value."""
    if depth > 64:
        return False
    t = type(v)
    if t is list:
        if _joined(v) is not None:  # all text: one C pass (a third of a pass over the types)
            return True
        types = set(map(type, v))
    elif t is dict:
        if not set(map(type, v)) <= {str}:
            return False
        v = v.values()
        if _joined(v) is not None:
            return True
        types = set(map(type, v))
    else:
        return t in _LEAVES or (t is int and _I64_MIN <= v <= _U64_MAX)
    if not types <= _LEAVES | _CONTAINERS | {int}:
        return False
    if int in types:
        ints = [x for x in v if type(x) is int]
        if min(ints) < _I64_MIN or max(ints) > _U64_MAX:
            return False
    if types & _CONTAINERS:
        return all(_plain(x, depth + 1) for x in v if type(x) in _CONTAINERS)
    return True


def serde_compact(value: Any, *, sort_keys: bool = True, plain: bool = False) -> bytes:
    """serde_json::to_vec of a value.

    ``sort_keys=True`` matches ``serde_json::Value`` (BTreeMap) objects;
    ``False`` keeps dict insertion order, for Rust structs whose field
    order the caller has reproduced. A value without floats (``_plain``)
    is written by the C encoder; ``plain=True``: the caller knows it is
    (``quick_check`` said ``QUICK_PLAIN``), so that pass is skipped.
    """
    if type(value) is str:  # the commonest stage value, hashed twice per stage call
        return _quote(value).encode("utf-8")
    if sort_keys and type(value) in _CONTAINERS and (plain or _plain(value)):
        try:
            return _C_ENCODE(value)
        except TypeError:  # a subclass of str (passed as text by a join): the Python encoder writes it
            pass
    out: list[str] = []
    _encode(value, out, ryu_number, _plain_key if sort_keys else None)
    return "".join(out).encode("utf-8")


def _joined(items: Any) -> str | None:
    """``items`` (a list or a dict's values) joined into one text when every one is text,
    else None: one C pass that answers "all text?" (stopping at the first that is not)
    and, from its length, how many characters — where a ``set(map(type, …))`` and a
    ``sum(map(len, …))`` took two passes, each about three times as long.

    The join allocates every character: only for items whose size is known to be
    bounded (see ``_over``)."""
    try:
        return "".join(items)
    except TypeError:
        return None


def _over(items: Any, limit: int) -> bool:
    """Whether ``items`` hold more than ``limit`` characters of text, counted without
    joining them. A container may hold one text many times (a Parallel whose branches
    all return their input: a thousand references to one megabyte): joining it would
    build all of it — a gigabyte, for a value refused at 32 MiB. Items without a length
    count nothing here (the join then tells they are not all text)."""
    try:
        return sum(map(len, items)) > limit
    except TypeError:  # a number, a boolean or null among them
        return False


def size_bounds(value: Any, limit: int) -> tuple[int, int] | None:
    """Cheap lower and upper bounds on ``len(serde_compact(value))`` for a list or dict of
    JSON values, measured container by container (``_quick``): a size check far from its
    limit needs no walk of every string. None for anything else, nested past 64 levels,
    holding what the bounds do not cover (a non-finite number, an integer beyond 64 bits:
    its digits are not bounded), or once the upper bound passes ``limit`` (undecided: the
    caller counts, with ``encoded_size``, which stops at the limit) — so the walk of a huge
    nested value stops early too."""
    found = _quick(value, limit, 1, 66)
    return None if found is None or found[1] > limit else (found[0], found[1])


#: ``quick_check`` answers: undecided (walk the value), valid, valid and plain.
QUICK_UNDECIDED, QUICK_VALID, QUICK_PLAIN = 0, 1, 2


def quick_check(value: Any, limit: int, max_depth: int) -> int:
    """For a list or dict: ``QUICK_VALID`` when it is certainly a value
    ``encoded_size(…, strict=True)`` would accept within ``limit`` bytes and ``max_depth``
    levels — its size bounded (as ``size_bounds`` bounds it), its text all Unicode, its
    numbers finite and its integers within 64 bits; ``QUICK_PLAIN`` when it is also
    ``_plain`` (no floats: the C encoder writes its serde-compact form, so ``value_hash``
    may skip that pass); ``QUICK_UNDECIDED`` means "walk it" (it may well be valid).
    One walk, container by container, each container's text joined once (C-speed passes,
    never value by value)."""
    found = _quick(value, limit, 1, min(max_depth, 64))
    if found is None or found[1] > limit:
        return QUICK_UNDECIDED
    return QUICK_PLAIN if found[2] else QUICK_VALID


def _quick(value: Any, limit: int, depth: int, max_depth: int) -> tuple[int, int, bool] | None:
    """Bounds on the serde-compact length of a valid list or dict and whether it is plain;
    None when undecided (not a container, too deep, invalid or past ``limit`` on the way)."""
    if depth >= max_depth:
        return None
    t = type(value)
    if t is list:
        items = value
        low = high = 2 + max(len(value) - 1, 0)
    elif t is dict:
        keys = _joined(value)  # None: a key that is not text
        if keys is None or not (keys.isascii() or _text_valid([keys])):
            return None
        low = 2 + max(2 * len(value) - 1, 0) + len(keys) + 2 * len(value)
        high = low + 5 * len(keys)
        items = list(value.values())
    else:
        return None
    if _over(items, limit):
        return None
    joined = _joined(items)
    if joined is not None:  # all text (the commonest list): types, length and validity from one C pass
        if not (joined.isascii() or _text_valid([joined])):
            return None
        low += len(joined) + 2 * len(items)
        high += 6 * len(joined) + 2 * len(items)  # an escape is at most six bytes, a UTF-8 character four
        return (low, high, True) if high <= limit else None
    types = set(map(type, items))
    if not types <= _LEAVES | _CONTAINERS | {int, float}:
        return None
    plain = float not in types
    strs = [x for x in items if type(x) is str] if str in types else []
    if strs:
        chars = sum(map(len, strs))
        if chars > limit:  # before the validity check joins them
            return None
        if not _text_valid(strs):
            return None
        low += chars + 2 * len(strs)
        high += 6 * chars + 2 * len(strs)
    if not plain and not _finite_sum(x for x in items if type(x) is float):
        return None  # NaN or an infinity (or a sum that overflows: then walk it)
    if int in types:
        ints = [x for x in items if type(x) is int]
        if min(ints) < _I64_MIN or max(ints) > _U64_MAX:
            return None
    nested = [x for x in items if type(x) in _CONTAINERS] if types & _CONTAINERS else []
    scalars = len(items) - len(strs) - len(nested)
    low += scalars
    high += 26 * scalars  # a number's shortest form is at most 24 bytes
    if high > limit:
        return None
    for x in nested:
        inner = _quick(x, limit - high, depth + 1, max_depth)
        if inner is None:
            return None
        low += inner[0]
        high += inner[1]
        plain = plain and inner[2]
    return low, high, plain


def _text_valid(strs: list[str]) -> bool:
    joined = "".join(strs)
    if joined.isascii():
        return True
    try:
        joined.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def _finite_sum(floats: Any) -> bool:
    try:
        return math.isfinite(math.fsum(floats))
    except OverflowError:  # fsum raises, rather than return inf, when a partial sum overflows
        return False


def fits(value: Any, limit: int) -> bool:
    """Whether ``serde_compact(value)`` is at most ``limit`` bytes: from ``size_bounds`` when
    they decide, else counted by ``encoded_size`` (never encoded, and only up to the limit)."""
    if size_bounds(value, limit) is not None:
        return True
    return encoded_size(value, limit) <= limit


def encoded_size(value: Any, limit: int, *, strict: bool = False, max_depth: int | None = None) -> int:
    """The length in bytes of ``serde_compact(value)``, counted without building it
    and only up to ``limit``: past the limit the count stops and a number
    larger than ``limit`` comes back. Time is bounded by the limit (every
    step counts at least one byte), memory by the value's depth, so a 1 GB
    value costs no more to refuse than a value just over the limit.

    ``strict`` refuses, on the way, what JSON cannot carry (``NoetherError``
    without a path): NaN, an infinity or an integer beyond a double's range
    (``non_finite_number``), text with a lone surrogate (``invalid_text``);
    ``max_depth`` refuses arrays and objects nested deeper (``value_too_deep``)."""
    total = 0
    stack: list[Iterator[Any]] = [iter((value,))]
    while stack:
        for v in stack[-1]:
            t = type(v)
            if t is str:
                if total + len(v) + 2 > limit:  # every character is at least one byte
                    return total + len(v) + 2
                if strict and not v.isascii():
                    _check_text(v)
                total += _str_size(v)
            elif v is None or v is True:
                total += 4
            elif v is False:
                total += 5
            elif t is int:
                if strict and not _I64_MIN <= v <= _U64_MAX:
                    _check_big_int(v)
                total += _int_size(v)
            elif t is float:
                if strict and not math.isfinite(v):
                    raise NoetherError("non_finite_number", f"holds {v!r}, which JSON cannot carry")
                total += len(_msgspec_encode(v))  # msgspec's shortest form is as long as ryu's
            elif t is list or t is tuple:
                if max_depth is not None and len(stack) > max_depth:
                    raise _too_deep(max_depth)
                total += 2 + max(len(v) - 1, 0)  # brackets and commas
                if total > limit:
                    return total
                if v:
                    stack.append(iter(v))
                    break
                continue
            elif t is dict:
                if max_depth is not None and len(stack) > max_depth:
                    raise _too_deep(max_depth)
                total += 2 + max(2 * len(v) - 1, 0)  # braces, colons and commas
                for k in v:  # the keys now, the values on the stack
                    if type(k) is not str:
                        raise TypeError(f"not a JSON object key: {type(k).__name__}")
                    if total + len(k) + 2 > limit:
                        return total + len(k) + 2
                    if strict and not k.isascii():
                        _check_text(k)
                    total += _str_size(k)
                if total > limit:
                    return total
                if v:
                    stack.append(iter(v.values()))
                    break
                continue
            elif isinstance(v, (str, int, float, list, tuple, dict)):  # a subclass: count it as its base
                stack.append(iter((_as_base(v),)))
                break
            else:
                raise TypeError(f"not a JSON value: {type(v).__name__}")
            if total > limit:
                return total
        else:
            stack.pop()
    return total


_msgspec_encode = msgspec.json.Encoder().encode

#: The largest integer a double holds (beyond it upstream's serde_json, which
#: reads such literals as f64, refuses the number).
_F64_INT_MAX = int(sys.float_info.max)


def _check_text(s: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise NoetherError("invalid_text", f"holds text with a lone surrogate (U+{ord(s[e.start]):04X} at "
                           f"character {e.start}), which is not Unicode text") from None


def _check_big_int(v: int) -> None:
    if v.bit_length() > 1024 or abs(v) > _F64_INT_MAX:
        raise NoetherError("non_finite_number", f"holds an integer of {v.bit_length()} bits, beyond the range "
                           "of the double JSON numbers are read as")


def _too_deep(max_depth: int) -> NoetherError:
    return NoetherError("value_too_deep", f"is nested deeper than {max_depth} levels of arrays and objects")


def _str_size(s: str) -> int:
    if _NEEDS_ESCAPE.search(s) is None:
        return (len(s) if s.isascii() else len(s.encode("utf-8", "surrogatepass"))) + 2
    return len(json.dumps(s, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def _int_size(v: int) -> int:
    if _I64_MIN <= v <= _U64_MAX:
        return len(str(v))
    try:
        return len(ryu_number(float(v)))
    except OverflowError:  # not representable at all; its digits are what a reader would get
        return int(v.bit_length() * 0.30103) + 2


_BASES: tuple[Any, ...] = (str, int, float, list, tuple, dict)


def _as_base(v: Any) -> Any:
    for base in _BASES:
        if isinstance(v, base):
            return base(v)
    return v


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def value_hash(value: Any, *, plain: bool = False) -> str:
    """Upstream's ``hash_value``: sha256 of the serde-compact form. ``plain=True``: a
    ``quick_check`` of this very value (unchanged since) said ``QUICK_PLAIN``."""
    return sha256_hex(serde_compact(value, plain=plain))
