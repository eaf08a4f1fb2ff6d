"""NType: Noether's structural type system (spec §1).

The canonical wire form is adjacently tagged ``{"kind": K, "value": V}``;
msgspec tagged Structs reproduce it exactly, so decoding *is* validation.
Structs are frozen; records hold plain dicts, so ordering and equality go
through :func:`sort_key` rather than ``__hash__``.
"""

from __future__ import annotations

from typing import Any, Union

import msgspec

from noether_nix.errors import NoetherError
from noether_nix.model.jcs import serde_compact
from noether_nix.suggest import did_you_mean

_TAG = "kind"


class _T(msgspec.Struct, frozen=True, tag_field=_TAG, omit_defaults=True):
    pass


class AnyType(_T, frozen=True, tag="Any"):
    pass


class BoolType(_T, frozen=True, tag="Bool"):
    pass


class BytesType(_T, frozen=True, tag="Bytes"):
    pass


class ListType(_T, frozen=True, tag="List"):
    value: NType


class MapKV(msgspec.Struct, frozen=True):
    key: NType
    value: NType


class MapType(_T, frozen=True, tag="Map"):
    value: MapKV


class NullType(_T, frozen=True, tag="Null"):
    pass


class NumberType(_T, frozen=True, tag="Number"):
    pass


class RecordType(_T, frozen=True, tag="Record"):
    value: dict[str, NType]


class StreamType(_T, frozen=True, tag="Stream"):
    value: NType


class TextType(_T, frozen=True, tag="Text"):
    pass


class UnionType(_T, frozen=True, tag="Union"):
    value: list[NType]


class VNodeType(_T, frozen=True, tag="VNode"):
    pass


class VarType(_T, frozen=True, tag="Var"):
    value: str


class RecordWithBody(msgspec.Struct, frozen=True):
    fields: dict[str, NType]
    rest: str


class RecordWithType(_T, frozen=True, tag="RecordWith"):
    value: RecordWithBody


class _R(msgspec.Struct, frozen=True, tag_field="kind", omit_defaults=True):
    pass


class RangeRefinement(_R, frozen=True, tag="Range"):
    # Field order matters for serde-compact (legacy v0 IDs): min before max.
    min: float | None = None
    max: float | None = None


class OneOfRefinement(_R, frozen=True, tag="OneOf"):
    options: list[Any]


class NonEmptyRefinement(_R, frozen=True, tag="NonEmpty"):
    pass


Refinement = Union[RangeRefinement, OneOfRefinement, NonEmptyRefinement]


class RefinedBody(msgspec.Struct, frozen=True):
    base: NType
    refinement: Refinement


class RefinedType(_T, frozen=True, tag="Refined"):
    value: RefinedBody


NType = Union[
    AnyType,
    BoolType,
    BytesType,
    ListType,
    MapType,
    NullType,
    NumberType,
    RecordType,
    StreamType,
    TextType,
    UnionType,
    VNodeType,
    VarType,
    RecordWithType,
    RefinedType,
]

# Declaration order = upstream's derived Ord variant index (spec §1.3).
VARIANT_ORDER: dict[type, int] = {t: i for i, t in enumerate(NType.__args__)}  # type: ignore[attr-defined]
KIND_NAMES: tuple[str, ...] = tuple(
    t.__struct_config__.tag for t in NType.__args__  # type: ignore[attr-defined]
)
PRIMITIVE_NAMES = ("Any", "Bool", "Bytes", "Null", "Number", "Text", "VNode")

ANY = AnyType()
BOOL = BoolType()
BYTES = BytesType()
NULL = NullType()
NUMBER = NumberType()
TEXT = TextType()
VNODE = VNodeType()
_PRIMS: dict[str, NType] = {
    "Any": ANY,
    "Bool": BOOL,
    "Bytes": BYTES,
    "Null": NULL,
    "Number": NUMBER,
    "Text": TEXT,
    "VNode": VNODE,
}


# ---------------------------------------------------------------- wire form


def _err_path(msg: str, base: str) -> tuple[str, str]:
    # msgspec says "... - at `$.value.x`"; re-root it at the caller's path.
    if " - at `$" in msg:
        text, _, where = msg.partition(" - at `$")
        return text, base + where.rstrip("`")
    return msg, base


def from_json(value: Any, *, path: str = "type") -> NType:
    """Decode the canonical wire form (no shorthand)."""
    try:
        t: NType = msgspec.convert(value, NType)
        return t
    except msgspec.ValidationError as e:
        text, where = _err_path(str(e), path)
        if where.endswith(".kind") and text.startswith("Invalid value "):
            # A misspelt kind: name the kinds there are, and the closest one.
            bad = text[len("Invalid value "):].strip("'")
            text = f"unknown type kind {bad!r}{did_you_mean(bad, KIND_NAMES)} (known kinds: {', '.join(KIND_NAMES)})"
            raise NoetherError("invalid_type", text, path=where) from None
        raise NoetherError("invalid_type", f"invalid type: {text}", path=where) from None


def to_json(t: NType) -> Any:
    """The canonical wire form as plain JSON values (record keys sorted)."""
    return msgspec.to_builtins(_sorted_records(t))


def _sorted_records(t: NType) -> NType:
    # Records are BTreeMaps upstream: serialise with sorted keys so that
    # serde-compact encodings (legacy IDs) match without a global sort.
    match t:
        case RecordType(value=fields):
            return RecordType({k: _sorted_records(fields[k]) for k in sorted(fields)})
        case RecordWithType(value=RecordWithBody(fields=fields, rest=rest)):
            return RecordWithType(
                RecordWithBody({k: _sorted_records(fields[k]) for k in sorted(fields)}, rest)
            )
        case ListType(value=v):
            return ListType(_sorted_records(v))
        case StreamType(value=v):
            return StreamType(_sorted_records(v))
        case MapType(value=MapKV(key=k, value=v)):
            return MapType(MapKV(_sorted_records(k), _sorted_records(v)))
        case UnionType(value=vs):
            return UnionType([_sorted_records(v) for v in vs])
        case RefinedType(value=RefinedBody(base=b, refinement=r)):
            return RefinedType(RefinedBody(_sorted_records(b), r))
    return t


# ---------------------------------------------------------------- shorthand


def normalize_shorthand(value: Any, path: str = "type") -> Any:
    """Rewrite spec-file shorthand into the canonical form (spec §1.2).

    Unlike upstream, a canonical ``List``/``Stream`` value is normalised as a
    *type* (upstream treats it as a map of types and corrupts
    ``{"kind":"List","value":{"kind":"Text"}}``), ``Var`` keeps its name, and
    ``RecordWith`` fields are normalised too. A name that is no type kind
    (``"Numbr"``, at any depth) is refused here, with the closest kind.
    """
    if isinstance(value, str):
        if value in _PRIMS:
            return {"kind": value}
        raise NoetherError("invalid_type", f"unknown type kind {value!r}{did_you_mean(value, KIND_NAMES)} "
                           f"(known kinds: {', '.join(KIND_NAMES)})", path=path)
    if isinstance(value, dict):
        if "kind" in value:
            kind = value["kind"]
            if "value" not in value:
                return dict(value)
            v = value["value"]
            out = dict(value)
            at = f"{path}.value"
            if kind in ("List", "Stream"):
                out["value"] = normalize_shorthand(v, at)
            elif kind == "Map" and isinstance(v, dict):
                out["value"] = {k: normalize_shorthand(x, f"{at}.{k}") for k, x in v.items()}
            elif kind == "Map" and isinstance(v, list) and len(v) == 2:
                out["value"] = {"key": normalize_shorthand(v[0], f"{at}[0]"),
                                "value": normalize_shorthand(v[1], f"{at}[1]")}
            elif kind == "Record" and isinstance(v, dict):
                out["value"] = {k: normalize_shorthand(x, f"{at}.{k}") for k, x in v.items()}
            elif kind == "Union" and isinstance(v, list):
                out["value"] = [normalize_shorthand(x, f"{at}[{i}]") for i, x in enumerate(v)]
            elif kind == "RecordWith" and isinstance(v, dict):
                rw = dict(v)
                if isinstance(rw.get("fields"), dict):
                    rw["fields"] = {k: normalize_shorthand(x, f"{at}.fields.{k}") for k, x in rw["fields"].items()}
                out["value"] = rw
            elif kind == "Refined" and isinstance(v, dict):
                rf = dict(v)
                if "base" in rf:
                    rf["base"] = normalize_shorthand(rf["base"], f"{at}.base")
                out["value"] = rf
            return out
        if "List" in value:
            return {"kind": "List", "value": normalize_shorthand(value["List"], f"{path}.List")}
        if "Stream" in value:
            return {"kind": "Stream", "value": normalize_shorthand(value["Stream"], f"{path}.Stream")}
        if "Map" in value and isinstance(value["Map"], list) and len(value["Map"]) == 2:
            k, v = value["Map"]
            return {"kind": "Map", "value": {"key": normalize_shorthand(k, f"{path}.Map[0]"),
                                             "value": normalize_shorthand(v, f"{path}.Map[1]")}}
        if "Record" in value and isinstance(value["Record"], list):
            fields: dict[str, Any] = {}
            for i, entry in enumerate(value["Record"]):
                if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
                    # Upstream silently skips malformed entries; we refuse them.
                    raise NoetherError(
                        "invalid_type",
                        f"Record shorthand entries must be [\"name\", type], got {entry!r}",
                        path=f"{path}.Record[{i}]",
                    )
                fields[entry[0]] = normalize_shorthand(entry[1], f"{path}.Record[{i}][1]")
            return {"kind": "Record", "value": fields}
        if "Union" in value and isinstance(value["Union"], list):
            return {"kind": "Union", "value": [normalize_shorthand(x, f"{path}.Union[{i}]")
                                               for i, x in enumerate(value["Union"])]}
    return value


def parse_type(value: Any, *, path: str = "type") -> NType:
    """Parse a type as written in a spec file: canonical or shorthand."""
    return from_json(normalize_shorthand(value, path), path=path)


# ---------------------------------------------------------------- ordering


def refinement_json(r: Refinement) -> Any:
    return msgspec.to_builtins(r)


def sort_key(t: NType) -> tuple[Any, ...]:
    """A key reproducing upstream's derived ``Ord`` (variant index, then payload)."""
    idx = VARIANT_ORDER[type(t)]
    match t:
        case ListType(value=v) | StreamType(value=v):
            return (idx, sort_key(v))
        case MapType(value=MapKV(key=k, value=v)):
            return (idx, sort_key(k), sort_key(v))
        case RecordType(value=fields):
            return (idx, tuple((k.encode(), sort_key(fields[k])) for k in sorted(fields)))
        case UnionType(value=vs):
            return (idx, tuple(sort_key(v) for v in vs))
        case VarType(value=name):
            return (idx, name.encode())
        case RecordWithType(value=RecordWithBody(fields=fields, rest=rest)):
            return (
                idx,
                tuple((k.encode(), sort_key(fields[k])) for k in sorted(fields)),
                rest.encode(),
            )
        case RefinedType(value=RefinedBody(base=b, refinement=r)):
            return (idx, sort_key(b), serde_compact(refinement_json(r), sort_keys=False))
    return (idx,)


def type_eq(a: NType, b: NType) -> bool:
    return sort_key(a) == sort_key(b)


def union(variants: list[NType]) -> NType:
    """Upstream's ``NType::union``: flatten, sort, dedup; 1 → itself, 0 → Null."""
    flat: list[NType] = []

    def add(v: NType) -> None:
        if isinstance(v, UnionType):
            for x in v.value:
                add(x)
        else:
            flat.append(v)

    for v in variants:
        add(v)
    seen: dict[tuple[Any, ...], NType] = {}
    for v in flat:
        seen.setdefault(sort_key(v), v)
    ordered = [seen[k] for k in sorted(seen)]
    if not ordered:
        return NULL
    if len(ordered) == 1:
        return ordered[0]
    return UnionType(ordered)


def optional(t: NType) -> NType:
    return union([t, NULL])


# ---------------------------------------------------------------- display


def _fmt_num(x: float) -> str:
    # Rust's f64 Display: integral values print without ".0".
    return str(int(x)) if x == int(x) and abs(x) < 1e16 else repr(x)


def display_refinement(r: Refinement) -> str:
    match r:
        case RangeRefinement(min=lo, max=hi):
            lo_s = _fmt_num(lo) if lo is not None else ""
            hi_s = f"={_fmt_num(hi)}" if hi is not None else ""
            return f"Range({lo_s}..{hi_s})"
        case OneOfRefinement(options=opts):
            return "OneOf[" + ", ".join(serde_compact(o).decode() for o in opts) + "]"
        case NonEmptyRefinement():
            return "NonEmpty"
    raise AssertionError(r)


def display(t: NType) -> str:
    """Upstream's Display form, used in messages and listings."""
    match t:
        case ListType(value=v):
            return f"List<{display(v)}>"
        case StreamType(value=v):
            return f"Stream<{display(v)}>"
        case MapType(value=MapKV(key=k, value=v)):
            return f"Map<{display(k)}, {display(v)}>"
        case RecordType(value=fields):
            return "Record { " + ", ".join(f"{k}: {display(fields[k])}" for k in sorted(fields)) + " }"
        case UnionType(value=vs):
            return " | ".join(display(v) for v in vs)
        case VarType(value=name):
            return f"<{name}>"
        case RecordWithType(value=RecordWithBody(fields=fields, rest=rest)):
            inner = ", ".join(f"{k}: {display(fields[k])}" for k in sorted(fields))
            return "Record { " + (inner + ", " if inner else "") + f"...<{rest}> }}"
        case RefinedType(value=RefinedBody(base=b, refinement=r)):
            return f"{display(b)} | {display_refinement(r)}"
    return type(t).__struct_config__.tag  # type: ignore[return-value]
