"""Hypothesis strategies for JSON values and NTypes."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from noether_nix.model.types import (
    ANY,
    BOOL,
    BYTES,
    NULL,
    NUMBER,
    TEXT,
    VNODE,
    AnyType,
    ListType,
    MapKV,
    MapType,
    NType,
    RecordType,
    StreamType,
    UnionType,
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)

json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)

field_names = st.sampled_from(["a", "b", "c", "name", "x"])
primitives = st.sampled_from([BOOL, BYTES, NULL, NUMBER, TEXT, VNODE])


def _compound(children: st.SearchStrategy[NType]) -> st.SearchStrategy[NType]:
    return (
        children.map(ListType)
        | children.map(StreamType)
        | st.builds(lambda v: MapType(MapKV(TEXT, v)), children)
        | st.dictionaries(field_names, children, max_size=3).map(RecordType)
        | st.lists(children, min_size=2, max_size=3).map(UnionType)
    )


# Closed types without variables; Any included, as upstream types use it.
ntypes: st.SearchStrategy[NType] = st.recursive(primitives | st.just(ANY), _compound, max_leaves=6)


def mentions_any(t: NType) -> bool:
    match t:
        case AnyType():
            return True
        case ListType(value=v):
            return mentions_any(v)
        case MapType(value=kv):
            return mentions_any(kv.key) or mentions_any(kv.value)
        case RecordType(value=f):
            return any(mentions_any(v) for v in f.values())
        case UnionType(value=vs):
            return any(mentions_any(v) for v in vs)
        case StreamType(value=v):
            return mentions_any(v)
    return False


closed_ntypes: st.SearchStrategy[NType] = st.recursive(primitives, _compound, max_leaves=6)


@st.composite
def narrowed(draw: st.DrawFn, t: NType) -> NType:
    """A type that is a subtype of ``t`` by construction (width, depth, union choice)."""
    if draw(st.booleans()):
        return t
    match t:
        case AnyType():
            return draw(closed_ntypes)
        case ListType(value=v):
            return ListType(draw(narrowed(v)))
        case StreamType(value=v):
            return StreamType(draw(narrowed(v)))
        case MapType(value=MapKV(key=k, value=v)):
            return MapType(MapKV(draw(narrowed(k)), draw(narrowed(v))))
        case RecordType(value=fields):
            out = {name: draw(narrowed(ft)) for name, ft in fields.items()}
            extra = draw(st.dictionaries(st.sampled_from(["p", "q"]), closed_ntypes, max_size=1))
            out.update({k: v for k, v in extra.items() if k not in out})
            return RecordType(out)
        case UnionType(value=vs):
            return draw(narrowed(draw(st.sampled_from(vs))))
    return t
