"""Subtyping rules and reasons (spec §1.4), plus laws on generated types."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from noether_nix.model.subtyping import Compatible, Incompatible, is_nullable, is_subtype_of
from noether_nix.model.types import (
    ANY,
    BOOL,
    NULL,
    NUMBER,
    TEXT,
    ListType,
    MapKV,
    MapType,
    NType,
    RecordType,
    RecordWithBody,
    RecordWithType,
    StreamType,
    VarType,
    parse_type,
    union,
)
from tests.model.strategies import closed_ntypes, narrowed, ntypes

RANGE_0_100 = parse_type({"kind": "Refined", "value": {"base": "Number",
                                                       "refinement": {"kind": "Range", "min": 0, "max": 100}}})
RANGE_0_10 = parse_type({"kind": "Refined", "value": {"base": "Number",
                                                      "refinement": {"kind": "Range", "min": 0, "max": 10}}})


def reason(sub: NType, sup: NType) -> str:
    res = is_subtype_of(sub, sup)
    assert isinstance(res, Incompatible)
    return str(res)


def test_any_and_var_are_compatible_both_ways() -> None:
    for t in (TEXT, ListType(NUMBER), RecordType({"a": TEXT})):
        assert is_subtype_of(ANY, t) and is_subtype_of(t, ANY)
        assert is_subtype_of(VarType("T"), t) and is_subtype_of(t, VarType("T"))


def test_reasons_display_like_upstream() -> None:
    assert reason(TEXT, NUMBER) == "expected Number, got Text"
    assert reason(RecordType({"a": TEXT}), RecordType({"b": NUMBER})) == "missing required field `b`"
    assert reason(RecordType({"a": TEXT}), RecordType({"a": NUMBER})) == "field `a`: expected Number, got Text"
    assert reason(ListType(TEXT), ListType(NUMBER)) == "List element: expected Number, got Text"
    assert reason(StreamType(TEXT), StreamType(BOOL)) == "Stream element: expected Bool, got Text"
    assert reason(MapType(MapKV(NUMBER, TEXT)), MapType(MapKV(TEXT, TEXT))) == (
        "map key type: expected Text, got Number"
    )
    assert reason(MapType(MapKV(TEXT, TEXT)), MapType(MapKV(TEXT, NUMBER))) == (
        "map value type: expected Number, got Text"
    )
    assert reason(union([TEXT, NUMBER]), TEXT) == "type Number is not covered by the expected union"
    assert reason(BOOL, union([TEXT, NUMBER])) == "expected Number | Text, got Bool"
    assert reason(ListType(TEXT), StreamType(TEXT)) == "expected Stream<Text>, got List<Text>"


def test_records_width_depth_and_nullable_fields() -> None:
    assert is_subtype_of(RecordType({"a": TEXT, "b": NUMBER}), RecordType({"a": TEXT}))
    assert is_subtype_of(RecordType({}), RecordType({"a": union([TEXT, NULL])}))
    assert is_subtype_of(RecordType({"a": TEXT}), RecordType({}))
    open_r = RecordWithType(RecordWithBody({"a": TEXT}, "R"))
    assert is_subtype_of(RecordType({"a": TEXT, "z": BOOL}), open_r)
    assert is_subtype_of(open_r, RecordType({"a": TEXT}))


def test_refinements() -> None:
    assert is_subtype_of(RANGE_0_100, NUMBER)
    assert is_subtype_of(RANGE_0_100, RANGE_0_100)
    assert not is_subtype_of(NUMBER, RANGE_0_100)
    # No predicate implication, as upstream.
    assert not is_subtype_of(RANGE_0_10, RANGE_0_100)


def test_nullable() -> None:
    assert is_nullable(NULL) and is_nullable(ANY) and is_nullable(union([TEXT, NULL]))
    assert not is_nullable(TEXT) and not is_nullable(RecordType({}))


@given(ntypes)
def test_reflexive(t: NType) -> None:
    assert isinstance(is_subtype_of(t, t), Compatible)


@given(st.data(), closed_ntypes)
def test_transitive(data: st.DataObject, c: NType) -> None:
    # Any is both top and bottom, which makes the relation non-transitive by
    # design; chains are built over Any-free types.
    b = data.draw(narrowed(c))
    a = data.draw(narrowed(b))
    assert is_subtype_of(b, c) and is_subtype_of(a, b)
    assert is_subtype_of(a, c)


@given(ntypes)
def test_any_is_top_and_bottom(t: NType) -> None:
    assert is_subtype_of(t, ANY) and is_subtype_of(ANY, t)


@given(ntypes, ntypes)
def test_each_variant_is_a_subtype_of_the_union(a: NType, b: NType) -> None:
    u = union([a, b])
    assert is_subtype_of(a, u) and is_subtype_of(b, u)


@given(st.data(), ntypes)
def test_union_of_subtypes_is_a_subtype(data: st.DataObject, sup: NType) -> None:
    a, b = data.draw(narrowed(sup)), data.draw(narrowed(sup))
    assert is_subtype_of(union([a, b]), sup)
