"""Checking JSON values against NTypes and refinements (spec §8.3)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

from noether_nix.errors import NoetherError
from noether_nix.model.jcs import (
    QUICK_PLAIN,
    QUICK_UNDECIDED,
    encoded_size,
    fits,
    quick_check,
    serde_compact,
)
from noether_nix.model.types import (
    AnyType,
    BoolType,
    BytesType,
    ListType,
    MapKV,
    MapType,
    NonEmptyRefinement,
    NType,
    NullType,
    NumberType,
    OneOfRefinement,
    RangeRefinement,
    RecordType,
    RecordWithBody,
    RecordWithType,
    RefinedBody,
    RefinedType,
    Refinement,
    StreamType,
    TextType,
    UnionType,
    VarType,
    VNodeType,
    display,
    display_refinement,
)


def size_text(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def value_too_large(value: Any, limit: int, *, what: str, path: str | None = None) -> NoetherError | None:
    """The ``value_too_large`` error if ``value``'s JSON encoding is over ``limit`` bytes,
    else None; measured with an early stop (``model.jcs.encoded_size``), never serialised."""
    if fits(value, limit):
        return None
    return NoetherError("value_too_large", f"{what} is larger than the {size_text(limit)} a value may have",
                        path=path, exit_code=3, details={"limit_bytes": limit},
                        hint="pass less data between stages (keep large data in a file or kv entry and pass "
                             "its name), or raise max_value_bytes in the engine configuration")


def check_value_size(value: Any, limit: int, *, what: str, path: str | None = None) -> None:
    """Raise ``value_too_large`` (see ``value_too_large``) for a value over ``limit`` bytes."""
    err = value_too_large(value, limit, what=what, path=path)
    if err is not None:
        raise err


#: Deepest nesting of arrays and objects in a value that crosses a boundary
#: (a run's input, a stage's input and output, a run's output): upstream's
#: serde_json refuses deeper documents, and the bound keeps every recursive
#: pass over values (hashing, type checks) well inside Python's stack.
MAX_VALUE_DEPTH = 128


def check_value(value: Any, limit: int, *, what: str | Callable[[], str], path: str | None = None,
                max_depth: int = MAX_VALUE_DEPTH) -> bool:
    """Refuse what no value may be: larger than
    ``limit`` bytes (``value_too_large``), nested deeper than ``max_depth``
    (``value_too_deep``), or holding what JSON cannot carry — NaN, infinities,
    integers beyond a double (``non_finite_number``), lone surrogates
    (``invalid_text``). A list or record is checked a container at a time when it
    can be (``model.jcs.quick_check``), else by one early-stopping walk
    (``model.jcs.encoded_size``); ``what`` (or what it returns) names the value in the error.

    True when the check found the value plain (a list or record without floats, see
    ``model.jcs.quick_check``): ``value_hash(value, plain=True)`` may then skip that pass,
    as long as the value is not changed in between."""
    if type(value) is str and value.isascii() and 6 * len(value) + 2 <= limit:
        return False  # the commonest value, on every stage call: even escaped it fits, and ASCII is valid text
    if type(value) in (list, dict):
        quick = quick_check(value, limit, max_depth)
        if quick != QUICK_UNDECIDED:
            return quick == QUICK_PLAIN  # a large list or record of plain values, checked a container at a time
    try:
        size = encoded_size(value, limit, strict=True, max_depth=max_depth)
    except NoetherError as e:
        what = what() if callable(what) else what
        raise NoetherError(e.code, f"{what} {e.message}", path=path, exit_code=3,
                           hint="JSON values only: finite numbers, Unicode text, at most "
                                f"{max_depth} levels of nesting") from None
    if size > limit:
        err = value_too_large(value, limit, what=what() if callable(what) else what, path=path)
        assert err is not None
        raise err
    return False


def json_type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else repr(float(x))


def check_refinement(r: Refinement, value: Any) -> str | None:
    """None if ``value`` satisfies ``r``, else upstream's reason text."""
    match r:
        case RangeRefinement(min=lo, max=hi):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"Range requires a Number, got {json_type_name(value)}"
            if lo is not None and value < lo:
                return f"value {_num(value)} below minimum {_num(lo)}"
            if hi is not None and value > hi:
                return f"value {_num(value)} above maximum {_num(hi)}"
            return None
        case OneOfRefinement(options=opts):
            if any(serde_compact(value) == serde_compact(o) for o in opts):
                return None
            return f"value {serde_compact(value).decode()} is not one of the allowed options"
        case NonEmptyRefinement():
            if isinstance(value, str):
                return "string is empty" if not value else None
            if isinstance(value, list):
                return "array is empty" if not value else None
            if isinstance(value, dict):
                return "object is empty" if not value else None
            return f"NonEmpty expects a string / array / object, got {json_type_name(value)}"
    raise AssertionError(r)


def outer_refinements(t: NType) -> list[Refinement]:
    """The outermost chain of Refined layers, outermost first."""
    out: list[Refinement] = []
    while isinstance(t, RefinedType):
        out.append(t.value.refinement)
        t = t.value.base
    return out


def _nullable(t: NType) -> bool:
    match t:
        case NullType() | AnyType() | VarType():
            return True
        case UnionType(value=vs):
            return any(_nullable(v) for v in vs)
    return False


#: The exact Python types whose values certainly conform to a leaf NType (anything else:
#: ask ``conforms`` item by item, which also names the first mismatch).
_LEAF_TYPES: dict[type, frozenset[type]] = {
    TextType: frozenset({str}), NumberType: frozenset({int, float}), BoolType: frozenset({bool}),
    NullType: frozenset({type(None)}),
}


def conforms(value: Any, t: NType, path: str = "$") -> str | None:
    """None if ``value`` is a value of type ``t``, else the first mismatch with its path."""
    match t:
        case AnyType() | VarType():
            return None
        case BoolType():
            return None if isinstance(value, bool) else f"{path}: expected Bool, got {json_type_name(value)}"
        case NumberType():
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            return None if ok else f"{path}: expected Number, got {json_type_name(value)}"
        case TextType():
            return None if isinstance(value, str) else f"{path}: expected Text, got {json_type_name(value)}"
        case NullType():
            return None if value is None else f"{path}: expected Null, got {json_type_name(value)}"
        case BytesType():
            if not isinstance(value, str):
                return f"{path}: expected Bytes (base64 text), got {json_type_name(value)}"
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return f"{path}: expected Bytes, got text that is not base64"
            return None
        case VNodeType():
            return None if isinstance(value, dict) else f"{path}: expected VNode (an object), got {json_type_name(value)}"
        case ListType(value=el) | StreamType(value=el):
            if not isinstance(value, list):
                return f"{path}: expected {display(t)}, got {json_type_name(value)}"
            if isinstance(el, (AnyType, VarType)):
                return None  # every item conforms: no walk (a 100,000-item List<Any> cost ~28 ms)
            leaf = _LEAF_TYPES.get(type(el))
            if leaf is not None and set(map(type, value)) <= leaf:
                return None  # a list of plain leaves of the right type, checked in one C pass
            for i, item in enumerate(value):
                err = conforms(item, el, f"{path}[{i}]")
                if err:
                    return err
            return None
        case MapType(value=MapKV(key=kt, value=vt)):
            if not isinstance(value, dict):
                return f"{path}: expected {display(t)}, got {json_type_name(value)}"
            for k, v in value.items():
                err = conforms(k, kt, f"{path}<key {k!r}>") or conforms(v, vt, f"{path}.{k}")
                if err:
                    return err
            return None
        case RecordType(value=fields) | RecordWithType(value=RecordWithBody(fields=fields)):
            if not isinstance(value, dict):
                return f"{path}: expected {display(t)}, got {json_type_name(value)}"
            for name, ft in sorted(fields.items()):
                if name not in value:
                    if _nullable(ft):
                        continue
                    return f"{path}: missing required field `{name}`"
                err = conforms(value[name], ft, f"{path}.{name}")
                if err:
                    return err
            return None
        case UnionType(value=vs):
            if any(conforms(value, v, path) is None for v in vs):
                return None
            return f"{path}: {serde_compact(value).decode()[:80]} is none of {display(t)}"
        case RefinedType(value=RefinedBody(base=b, refinement=r)):
            err = conforms(value, b, path)
            if err:
                return err
            reason = check_refinement(r, value)
            return f"{path}: {display_refinement(r)}: {reason}" if reason else None
    raise AssertionError(t)
