"""Structural subtyping ``is_subtype_of(sub, sup)`` (spec §1.4).

Rules are evaluated in upstream's order; every incompatibility carries a
reason whose ``str()`` is upstream's Display text.
"""

from __future__ import annotations

from typing import Union

import msgspec

from noether_nix.model.types import (
    AnyType,
    ListType,
    MapType,
    NType,
    NullType,
    OneOfRefinement,
    RecordType,
    RecordWithBody,
    RecordWithType,
    RefinedType,
    StreamType,
    UnionType,
    VarType,
    display,
    refinement_json,
)

_PRIMITIVES = ("Text", "Number", "Bool", "Bytes", "Null", "VNode")


class PrimitiveMismatch(msgspec.Struct, frozen=True):
    expected: str
    got: str

    def __str__(self) -> str:
        return f"expected {self.expected}, got {self.got}"


class MissingField(msgspec.Struct, frozen=True):
    field: str

    def __str__(self) -> str:
        return f"missing required field `{self.field}`"


class FieldTypeMismatch(msgspec.Struct, frozen=True):
    field: str
    reason: Reason

    def __str__(self) -> str:
        return f"field `{self.field}`: {self.reason}"


class InnerTypeMismatch(msgspec.Struct, frozen=True):
    context: str
    reason: Reason

    def __str__(self) -> str:
        return f"{self.context}: {self.reason}"


class UnionNotCovered(msgspec.Struct, frozen=True):
    variant: str

    def __str__(self) -> str:
        return f"type {self.variant} is not covered by the expected union"


class MapKeyMismatch(msgspec.Struct, frozen=True):
    reason: Reason

    def __str__(self) -> str:
        return f"map key type: {self.reason}"


class MapValueMismatch(msgspec.Struct, frozen=True):
    reason: Reason

    def __str__(self) -> str:
        return f"map value type: {self.reason}"


Reason = Union[
    PrimitiveMismatch, MissingField, FieldTypeMismatch, InnerTypeMismatch, UnionNotCovered,
    MapKeyMismatch, MapValueMismatch,
]


class Compatible(msgspec.Struct, frozen=True):
    def __bool__(self) -> bool:
        return True


class Incompatible(msgspec.Struct, frozen=True):
    reason: Reason

    def __bool__(self) -> bool:
        return False

    def __str__(self) -> str:
        return str(self.reason)


Compatibility = Union[Compatible, Incompatible]
COMPATIBLE = Compatible()


def is_nullable(t: NType) -> bool:
    """Null, Any, Var, or a union with a nullable variant."""
    match t:
        case NullType() | AnyType() | VarType():
            return True
        case UnionType(value=vs):
            return any(is_nullable(v) for v in vs)
    return False


def _mismatch(sub: NType, sup: NType) -> Incompatible:
    return Incompatible(PrimitiveMismatch(expected=display(sup), got=display(sub)))


def _record_fields(t: NType) -> dict[str, NType] | None:
    match t:
        case RecordType(value=f) | RecordWithType(value=RecordWithBody(fields=f)):
            return f
    return None


def is_subtype_of(sub: NType, sup: NType) -> Compatibility:
    # 1. Any is top and bottom; 2. Var is permissive (unification is strict).
    if isinstance(sub, (AnyType, VarType)) or isinstance(sup, (AnyType, VarType)):
        return COMPATIBLE
    # 3. Refinements.
    if isinstance(sub, RefinedType) and isinstance(sup, RefinedType):
        if refinement_json(sub.value.refinement) == refinement_json(sup.value.refinement) and _same_json_kinds(
            sub, sup
        ):
            return is_subtype_of(sub.value.base, sup.value.base)
        return _mismatch(sub, sup)
    if isinstance(sub, RefinedType):
        return is_subtype_of(sub.value.base, sup)
    if isinstance(sup, RefinedType):
        return _mismatch(sub, sup)
    # 4. Identical primitives.
    tag_sub = type(sub).__struct_config__.tag
    tag_sup = type(sup).__struct_config__.tag
    if tag_sub in _PRIMITIVES and tag_sub == tag_sup:
        return COMPATIBLE
    # 5. List / Stream, covariant, never mixed.
    if isinstance(sub, ListType) and isinstance(sup, ListType):
        return _inner("List element", is_subtype_of(sub.value, sup.value))
    if isinstance(sub, StreamType) and isinstance(sup, StreamType):
        return _inner("Stream element", is_subtype_of(sub.value, sup.value))
    # 6. Map, covariant in key and value.
    if isinstance(sub, MapType) and isinstance(sup, MapType):
        k = is_subtype_of(sub.value.key, sup.value.key)
        if isinstance(k, Incompatible):
            return Incompatible(MapKeyMismatch(k.reason))
        v = is_subtype_of(sub.value.value, sup.value.value)
        if isinstance(v, Incompatible):
            return Incompatible(MapValueMismatch(v.reason))
        return COMPATIBLE
    # 7–8. Records (open or closed) by width and depth; row variables ignored.
    sub_fields, sup_fields = _record_fields(sub), _record_fields(sup)
    if sub_fields is not None and sup_fields is not None:
        for name in sorted(sup_fields):
            want = sup_fields[name]
            if name in sub_fields:
                res = is_subtype_of(sub_fields[name], want)
                if isinstance(res, Incompatible):
                    return Incompatible(FieldTypeMismatch(name, res.reason))
            elif not is_nullable(want):
                return Incompatible(MissingField(name))
        return COMPATIBLE
    # 9. A union is a subtype iff every variant is.
    if isinstance(sub, UnionType):
        for variant in sub.value:
            if isinstance(is_subtype_of(variant, sup), Incompatible):
                return Incompatible(UnionNotCovered(display(variant)))
        return COMPATIBLE
    # 10. Into a union: some variant must accept it.
    if isinstance(sup, UnionType):
        if any(isinstance(is_subtype_of(sub, variant), Compatible) for variant in sup.value):
            return COMPATIBLE
        return _mismatch(sub, sup)
    return _mismatch(sub, sup)


def _same_json_kinds(a: RefinedType, b: RefinedType) -> bool:
    # Upstream compares OneOf options as JSON values: 1 != 1.0.
    ra, rb = a.value.refinement, b.value.refinement
    if isinstance(ra, OneOfRefinement) and isinstance(rb, OneOfRefinement):
        return [type(x) for x in ra.options] == [type(x) for x in rb.options]
    return True


def _inner(context: str, res: Compatibility) -> Compatibility:
    if isinstance(res, Incompatible):
        return Incompatible(InnerTypeMismatch(context, res.reason))
    return res

