"""Declarative stage properties checked against examples (spec §3.2)."""

from __future__ import annotations

from typing import Any, Union

import msgspec

from noether_nix.errors import NoetherError
from noether_nix.model.jcs import jcs
from noether_nix.suggest import did_you_mean


class _P(msgspec.Struct, frozen=True, tag_field="kind", omit_defaults=True):
    pass


class SetMember(_P, frozen=True, tag="set_member"):
    field: str
    set: list[Any]


class RangeProperty(_P, frozen=True, tag="range"):
    field: str
    min: float | None = None
    max: float | None = None


class FieldLengthEq(_P, frozen=True, tag="field_length_eq"):
    left_field: str
    right_field: str


class FieldLengthMax(_P, frozen=True, tag="field_length_max"):
    subject_field: str
    bound_field: str


class SubsetOf(_P, frozen=True, tag="subset_of"):
    subject_field: str
    super_field: str


class Equals(_P, frozen=True, tag="equals"):
    left_field: str
    right_field: str


class FieldTypeIn(_P, frozen=True, tag="field_type_in"):
    field: str
    allowed: list[str]


Property = Union[SetMember, RangeProperty, FieldLengthEq, FieldLengthMax, SubsetOf, Equals, FieldTypeIn]
_JSON_TYPES = ("null", "bool", "number", "string", "array", "object")
KINDS: tuple[str, ...] = tuple(t.__struct_config__.tag for t in Property.__args__)  # type: ignore[attr-defined]
#: ``Range`` → ``range``, ``FieldLengthMax`` → ``field_length_max``, …
_CAMEL = {"".join(w.capitalize() for w in k.split("_")): k for k in KINDS}


def parse_properties(value: Any, *, path: str = "properties") -> list[Property]:
    """Parse properties; unlike upstream an unknown kind is an error, not a silent pass."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise NoetherError("invalid_spec", "properties must be an array", path=path)
    out: list[Property] = []
    for i, p in enumerate(value):
        if isinstance(p, dict) and isinstance(p.get("kind"), str):
            kind = p["kind"]
            if _CAMEL.get(kind):
                # Upstream's own example (property-annotated) writes kinds in CamelCase.
                p = {**p, "kind": _CAMEL[kind]}
            elif kind not in KINDS:
                raise NoetherError("invalid_property", f"unknown property kind {kind!r}{did_you_mean(kind, KINDS)} "
                                   f"(known: {', '.join(KINDS)})", path=f"{path}[{i}]")
        try:
            prop = msgspec.convert(p, Property)
        except msgspec.ValidationError as e:
            raise NoetherError("invalid_property", f"invalid property: {e}", path=f"{path}[{i}]") from None
        for f in _fields_of(prop):
            if not (f == "input" or f == "output" or f.startswith(("input.", "output."))):
                raise NoetherError(
                    "invalid_property",
                    f"field path {f!r} must start with 'input' or 'output'",
                    path=f"{path}[{i}]",
                )
        if isinstance(prop, FieldTypeIn):
            bad = [a for a in prop.allowed if a not in _JSON_TYPES]
            if bad:
                raise NoetherError(
                    "invalid_property",
                    f"unknown JSON type(s) {bad} (known: {', '.join(_JSON_TYPES)})",
                    path=f"{path}[{i}]",
                )
        out.append(prop)
    return out


def _fields_of(p: Property) -> list[str]:
    match p:
        case SetMember(field=f) | RangeProperty(field=f) | FieldTypeIn(field=f):
            return [f]
        case FieldLengthEq(left_field=a, right_field=b) | Equals(left_field=a, right_field=b):
            return [a, b]
        case FieldLengthMax(subject_field=a, bound_field=b):
            return [a, b]
        case SubsetOf(subject_field=a, super_field=b):
            return [a, b]
    raise AssertionError(p)


_MISSING = object()


def _lookup(path: str, input: Any, output: Any) -> Any:
    head, *rest = path.split(".")
    cur = input if head == "input" else output
    for part in rest:
        if not isinstance(cur, dict) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


def _json_eq(a: Any, b: Any) -> bool:
    return jcs(a) == jcs(b)


def _length(v: Any) -> int | None:
    if isinstance(v, (str, list, dict)):
        return len(v)
    return None


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def check_property(p: Property, input: Any, output: Any) -> str | None:
    """None when the property holds for (input, output), else the violation."""
    got = [_lookup(f, input, output) for f in _fields_of(p)]
    if any(g is _MISSING for g in got):
        missing = [f for f, g in zip(_fields_of(p), got, strict=True) if g is _MISSING]
        return f"field {missing[0]} is missing"
    match p:
        case SetMember(field=f, set=options):
            return None if any(_json_eq(got[0], o) for o in options) else f"{f} is not in the set"
        case RangeProperty(field=f, min=lo, max=hi):
            v = got[0]
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                return f"{f} is not a number"
            if lo is not None and v < lo:
                return f"{f} = {v} is below {lo}"
            if hi is not None and v > hi:
                return f"{f} = {v} is above {hi}"
            return None
        case FieldLengthEq(left_field=a, right_field=b):
            la, lb = _length(got[0]), _length(got[1])
            return None if la is not None and la == lb else f"len({a}) != len({b})"
        case FieldLengthMax(subject_field=a, bound_field=b):
            la, lb = _length(got[0]), _length(got[1])
            return None if la is not None and lb is not None and la <= lb else f"len({a}) > len({b})"
        case SubsetOf(subject_field=a, super_field=b):
            s, sup = got
            ok = (
                (isinstance(s, list) and isinstance(sup, list) and all(any(_json_eq(x, y) for y in sup) for x in s))
                or (isinstance(s, dict) and isinstance(sup, dict) and all(k in sup and _json_eq(v, sup[k]) for k, v in s.items()))
                or (isinstance(s, str) and isinstance(sup, str) and s in sup)
            )
            return None if ok else f"{a} is not a subset of {b}"
        case Equals(left_field=a, right_field=b):
            return None if _json_eq(got[0], got[1]) else f"{a} != {b}"
        case FieldTypeIn(field=f, allowed=allowed):
            t = _json_type(got[0])
            return None if t in allowed else f"{f} has type {t}, allowed: {', '.join(allowed)}"
    raise AssertionError(p)
