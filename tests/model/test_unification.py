"""Unification (spec §1.5) and per-occurrence freshening."""

from __future__ import annotations

import pytest
from hypothesis import given

from noether_nix.model.types import (
    ANY,
    BOOL,
    NUMBER,
    TEXT,
    ListType,
    NType,
    RecordType,
    RecordWithBody,
    RecordWithType,
    VarType,
    display,
    type_eq,
)
from noether_nix.model.unification import (
    Substitution,
    UnificationError,
    contains_var_or_row,
    freshen,
    unify,
)
from tests.model.strategies import mentions_any, ntypes


def test_binds_variables() -> None:
    s = unify(ListType(VarType("T")), ListType(TEXT))
    assert s.apply(VarType("T")) == TEXT


def test_occurs_check() -> None:
    with pytest.raises(UnificationError) as ei:
        unify(VarType("T"), ListType(VarType("T")))
    assert "occurs in List<<T>>" in ei.value.message


def test_mismatch_names_both_types() -> None:
    with pytest.raises(UnificationError) as ei:
        unify(ListType(TEXT), ListType(NUMBER))
    assert ei.value.message.startswith("cannot unify List<Text> with List<Number>")


def test_closed_records_need_identical_keys() -> None:
    with pytest.raises(UnificationError):
        unify(RecordType({"a": TEXT}), RecordType({"a": TEXT, "b": TEXT}))
    unify(RecordType({"a": VarType("T")}), RecordType({"a": TEXT}))


def test_row_variable_binds_leftover_fields_and_closes() -> None:
    mark_in = RecordWithType(RecordWithBody({}, "R"))
    mark_out = RecordWithType(RecordWithBody({"done": BOOL}, "R"))
    s = unify(mark_in, RecordType({"title": TEXT}))
    assert display(s.apply(mark_out)) == "Record { done: Bool, title: Text }"


def test_open_open_is_refused() -> None:
    with pytest.raises(UnificationError) as ei:
        unify(RecordWithType(RecordWithBody({}, "R")), RecordWithType(RecordWithBody({}, "S")))
    assert "not supported" in ei.value.message


def test_any_is_a_fresh_variable_per_occurrence() -> None:
    s = unify(ListType(ANY), ListType(TEXT))
    unify(ListType(ANY), ListType(NUMBER), s)  # the second Any is independent


def test_freshen_renames_every_variable() -> None:
    t = RecordWithType(RecordWithBody({"x": VarType("T")}, "R"))
    f = freshen(t, "3")
    assert display(f) == "Record { x: <T#3>, ...<R#3> }"
    assert contains_var_or_row(f) and not contains_var_or_row(ListType(TEXT))


def test_long_variable_chains_resolve() -> None:
    s = Substitution()
    for i in range(2000):
        unify(VarType(f"v{i}"), VarType(f"v{i + 1}"), s)
    unify(VarType("v2000"), TEXT, s)
    assert s.apply(VarType("v0")) == TEXT


@given(ntypes)
def test_soundness_var_against_type(t: NType) -> None:
    s = unify(ListType(VarType("X")), ListType(t))
    assert type_eq(s.apply(VarType("X")), s.apply(t)) or mentions_any(t)


@given(ntypes, ntypes)
def test_soundness(a: NType, b: NType) -> None:
    try:
        s = unify(a, b)
    except UnificationError:
        return
    if not (mentions_any(a) or mentions_any(b)):
        assert type_eq(s.apply(a), s.apply(b))
