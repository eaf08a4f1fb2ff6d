"""Type checks of long lists: a one-pass shortcut for lists of plain leaves, the same answers."""

from __future__ import annotations

import pytest

from noether_nix.errors import NoetherError
from noether_nix.model.types import (
    AnyType,
    BoolType,
    ListType,
    NullType,
    NumberType,
    TextType,
    VarType,
)
from noether_nix.model.values import check_value, conforms


@pytest.mark.parametrize(("el", "good"), [
    (TextType(), ["a", "b", ""]), (NumberType(), [1, 2.5, -3]), (BoolType(), [True, False]), (NullType(), [None]),
])
def test_a_list_of_the_right_leaves_conforms_and_one_wrong_item_is_named(el: object, good: list[object]) -> None:
    t = ListType(el)  # type: ignore[arg-type]
    assert conforms(good * 1000, t) is None
    wrong = [*good * 10, {"x": 1}, *good]
    assert conforms(wrong, t, "output") == f"output[{len(good) * 10}]: expected {el.__class__.__name__.removesuffix('Type')}, got object"


def test_booleans_are_not_numbers_in_a_long_list() -> None:
    err = conforms([1, 2, True, 3], ListType(NumberType()), "input")
    assert err == "input[2]: expected Number, got boolean"


@pytest.mark.parametrize("el", [AnyType(), VarType("T")])
def test_a_list_of_any_conforms_whatever_it_holds_but_must_be_a_list(el: object) -> None:
    t = ListType(el)  # type: ignore[arg-type]
    assert conforms([1, "a", None, {"b": [2]}] * 1000, t) is None
    assert conforms({"a": 1}, t, "output") is not None


def test_a_long_list_of_text_is_still_checked_for_size_and_lone_surrogates() -> None:
    texts = [f"w{i}" for i in range(10_000)]
    check_value(texts, 1 << 20, what="the output")
    with pytest.raises(NoetherError) as e:
        check_value([*texts, "a\ud800"], 1 << 20, what="the output")
    assert e.value.code == "invalid_text"
    with pytest.raises(NoetherError) as e:
        check_value(texts, 50_000, what="the output")
    assert e.value.code == "value_too_large"
