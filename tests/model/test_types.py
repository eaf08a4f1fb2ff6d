"""NType wire form, shorthand, display, ordering and union normalisation."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given

from noether_nix.errors import NoetherError
from noether_nix.model.types import (
    ANY,
    NULL,
    NUMBER,
    TEXT,
    ListType,
    NType,
    RecordType,
    UnionType,
    display,
    from_json,
    parse_type,
    sort_key,
    to_json,
    type_eq,
    union,
)
from tests.model.strategies import ntypes

ALL_VARIANTS: list[Any] = [
    {"kind": "Any"},
    {"kind": "Bool"},
    {"kind": "Bytes"},
    {"kind": "List", "value": {"kind": "Text"}},
    {"kind": "Map", "value": {"key": {"kind": "Text"}, "value": {"kind": "Number"}}},
    {"kind": "Null"},
    {"kind": "Number"},
    {"kind": "Record", "value": {"a": {"kind": "Text"}, "b": {"kind": "Null"}}},
    {"kind": "Stream", "value": {"kind": "Bytes"}},
    {"kind": "Text"},
    {"kind": "Union", "value": [{"kind": "Text"}, {"kind": "Null"}]},
    {"kind": "VNode"},
    {"kind": "Var", "value": "T"},
    {"kind": "RecordWith", "value": {"fields": {"done": {"kind": "Bool"}}, "rest": "R"}},
    {"kind": "Refined", "value": {"base": {"kind": "Number"},
                                  "refinement": {"kind": "Range", "min": 0.0, "max": 100.0}}},
]


@pytest.mark.parametrize("wire", ALL_VARIANTS, ids=[w["kind"] for w in ALL_VARIANTS])
def test_wire_form_round_trips(wire: Any) -> None:
    assert to_json(from_json(wire)) == wire


def test_variant_order_matches_upstream_declaration() -> None:
    ts = [from_json(w) for w in ALL_VARIANTS]
    assert sorted(ts, key=sort_key) == ts


@pytest.mark.parametrize(
    ("short", "canonical"),
    [
        ("Text", {"kind": "Text"}),
        ({"List": "Number"}, {"kind": "List", "value": {"kind": "Number"}}),
        ({"Stream": {"List": "Text"}}, {"kind": "Stream", "value": {"kind": "List", "value": {"kind": "Text"}}}),
        ({"Map": ["Text", "Any"]}, {"kind": "Map", "value": {"key": {"kind": "Text"}, "value": {"kind": "Any"}}}),
        ({"Record": [["b", "Text"], ["a", "Number"]]},
         {"kind": "Record", "value": {"a": {"kind": "Number"}, "b": {"kind": "Text"}}}),
        ({"Union": ["Text", "Null"]}, {"kind": "Union", "value": [{"kind": "Text"}, {"kind": "Null"}]}),
        # Upstream corrupts this one (spec §1.2); we read it as List<Text>.
        ({"kind": "List", "value": {"kind": "Text"}}, {"kind": "List", "value": {"kind": "Text"}}),
        ({"kind": "Var", "value": "Text"}, {"kind": "Var", "value": "Text"}),
        ({"kind": "Record", "value": {"a": "Text"}}, {"kind": "Record", "value": {"a": {"kind": "Text"}}}),
    ],
)
def test_shorthand(short: Any, canonical: Any) -> None:
    assert to_json(parse_type(short)) == canonical


@pytest.mark.parametrize(
    ("bad", "path", "fragment"),
    [
        ("Txt", "t", "unknown type kind 'Txt'"),
        ({"kind": "Record", "value": {"a": {"kind": "Nope"}}}, "t.value", "unknown type kind 'Nope' (known kinds: "),
        ({"Record": [["a"]]}, "t", "Record shorthand"),
        (42, "t", "invalid type"),
    ],
)
def test_bad_types_name_the_path(bad: Any, path: str, fragment: str) -> None:
    with pytest.raises(NoetherError) as ei:
        parse_type(bad, path="t")
    assert ei.value.code == "invalid_type"
    assert (ei.value.path or "").startswith(path)
    assert fragment in ei.value.message


def test_display_forms() -> None:
    assert display(parse_type({"Map": ["Text", {"List": "Number"}]})) == "Map<Text, List<Number>>"
    assert display(RecordType({})) == "Record {  }"
    assert display(parse_type({"Record": [["b", "Text"], ["a", "Bool"]]})) == "Record { a: Bool, b: Text }"
    assert display(union([TEXT, NULL])) == "Null | Text"
    assert display(from_json(ALL_VARIANTS[13])) == "Record { done: Bool, ...<R> }"
    assert display(from_json(ALL_VARIANTS[14])) == "Number | Range(0..=100)"
    assert display(from_json({"kind": "Var", "value": "T"})) == "<T>"


def test_union_normalisation() -> None:
    assert union([]) == NULL
    assert union([TEXT]) == TEXT
    assert union([TEXT, NULL, TEXT]) == UnionType([NULL, TEXT])
    assert union([union([NUMBER, TEXT]), NULL]) == UnionType([NULL, NUMBER, TEXT])


@given(ntypes, ntypes, ntypes)
def test_union_laws(a: NType, b: NType, c: NType) -> None:
    assert type_eq(union([a, a]), union([a]))
    assert type_eq(union([a, b]), union([b, a]))
    assert type_eq(union([union([a, b]), c]), union([a, union([b, c])]))


@given(ntypes)
def test_wire_round_trip_generated(t: NType) -> None:
    assert type_eq(from_json(to_json(t)), t)


def test_any_is_first_after_nothing() -> None:
    assert sort_key(ANY) < sort_key(ListType(ANY))
