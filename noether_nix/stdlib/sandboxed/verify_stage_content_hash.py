"""verify_stage_content_hash: a stage record -> {passed, stage_id, computed, error}.

Recomputes the StageId: sha256 of the JCS (upstream serde_jcs) form of
{name, input, output, effects, implementation_hash}, with the effects as
an upstream EffectSet (sorted by variant, de-duplicated).
"""

import hashlib
import json
import math
from decimal import Decimal
from typing import Any


class StageError(Exception):
    pass


def _quote(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def _number(x: float) -> str:
    # ECMAScript Number.prototype.toString, as ryu-js prints it.
    if math.isnan(x) or math.isinf(x):
        raise StageError("NaN and infinity cannot be hashed")
    if x == 0:
        return "0"
    _, digits, exponent = Decimal(repr(abs(x))).as_tuple()
    ds = "".join(map(str, digits)).rstrip("0") or "0"
    exp = int(exponent) + len(digits) - len(ds)
    k, n = len(ds), exp + len(ds)
    if k <= n <= 21:
        out = ds + "0" * (n - k)
    elif 0 < n <= 21:
        out = ds[:n] + "." + ds[n:]
    elif -6 < n <= 0:
        out = "0." + "0" * (-n) + ds
    else:
        e = n - 1
        out = (ds if k == 1 else ds[0] + "." + ds[1:]) + ("e+" if e > 0 else "e-") + str(abs(e))
    return "-" + out if x < 0 else out


def jcs(v: Any) -> str:
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(v) if -(2**63) <= v <= 2**64 - 1 else _number(float(v))
    if isinstance(v, float):
        return _number(v)
    if isinstance(v, str):
        return _quote(v)
    if isinstance(v, list):
        return "[" + ",".join(jcs(x) for x in v) + "]"
    if isinstance(v, dict):
        keys = sorted(v, key=lambda k: _quote(k).encode("utf-8"))
        return "{" + ",".join(_quote(k) + ":" + jcs(v[k]) for k in keys) + "}"
    raise StageError(f"not a JSON value: {type(v).__name__}")


_EFFECT_ORDER = ("Cost", "Fallible", "FsRead", "FsWrite", "Llm", "Network",
                 "NonDeterministic", "Process", "Pure", "Unknown")


def _effect_key(effect: Any) -> tuple[Any, ...]:
    kind = effect.get("effect") if isinstance(effect, dict) else None
    if kind not in _EFFECT_ORDER:
        raise StageError(f"signature.effects holds {json.dumps(effect)}, which is not an effect")
    if kind == "Cost":
        return (_EFFECT_ORDER.index(kind), effect.get("cents"))
    if kind in ("FsRead", "FsWrite"):
        path = str(effect.get("path", ""))
        parts = tuple(c.encode() for c in path.split("/") if c not in ("", "."))
        return (_EFFECT_ORDER.index(kind), (("/",) if path.startswith("/") else ()) + parts)
    if kind == "Llm":
        return (_EFFECT_ORDER.index(kind), str(effect.get("model", "")).encode())
    return (_EFFECT_ORDER.index(kind),)


def _effect_set(effects: Any) -> dict[str, Any]:
    items = effects.get("effects") if isinstance(effects, dict) else effects
    if not isinstance(items, list):
        raise StageError('signature.effects must be {"effects": [...]} or a list of effects')
    unique: dict[tuple[Any, ...], Any] = {}
    for e in items:
        unique.setdefault(_effect_key(e), e)
    return {"effects": [unique[k] for k in sorted(unique)]}


def stage_id(name: str, signature: Any) -> str:
    if not isinstance(signature, dict):
        raise StageError("field 'signature' must be a record")
    missing = [f for f in ("input", "output", "effects", "implementation_hash") if f not in signature]
    if missing:
        raise StageError(f"signature is missing {', '.join(missing)}")
    for side in ("input", "output"):
        if not isinstance(signature[side], dict) or "kind" not in signature[side]:
            raise StageError(f"signature.{side} must be a type in canonical form ({{\"kind\": ...}})")
    if not isinstance(signature["implementation_hash"], str):
        raise StageError("signature.implementation_hash must be text")
    obj = {
        "name": name,
        "input": signature["input"],
        "output": signature["output"],
        "effects": _effect_set(signature["effects"]),
        "implementation_hash": signature["implementation_hash"],
    }
    return hashlib.sha256(jcs(obj).encode("utf-8")).hexdigest()


def execute(input: Any) -> Any:
    if not isinstance(input, dict):
        raise StageError("input must be a stage record")
    declared = input["id"] if isinstance(input.get("id"), str) else ""
    name = input["name"] if isinstance(input.get("name"), str) else ""
    computed = stage_id(name, input.get("signature"))
    if declared == computed:
        return {"computed": computed, "error": None, "passed": True, "stage_id": declared}
    return {"computed": computed, "passed": False, "stage_id": declared,
            "error": f"content hash mismatch: stage.id={declared} computed={computed}"}
