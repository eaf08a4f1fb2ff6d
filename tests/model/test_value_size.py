"""Security finding 4: a value's encoded size is measured with an early stop,
so refusing a 1 GB value costs what refusing one just over the cap does."""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from noether_nix.model.jcs import encoded_size, serde_compact
from noether_nix.model.values import value_too_large
from tests.model.strategies import json_values

awkward_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


@given(json_values)
def test_the_size_is_the_length_of_the_stage_encoding(value: Any) -> None:
    assert encoded_size(value, 1 << 30) == len(serde_compact(value))


@given(st.recursive(st.none() | st.booleans() | st.integers() | awkward_text,
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(awkward_text, c, max_size=4)),
       st.integers(0, 200))
def test_the_count_stops_past_the_limit_and_never_below_it(value: Any, limit: int) -> None:
    exact = len(serde_compact(value))
    got = encoded_size(value, limit)
    if exact <= limit:
        assert got == exact
    else:
        assert limit < got <= exact  # early: a lower bound that is already over the limit


def peak_bytes_while(fn: Any) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def nested(depth: int) -> Any:
    deep: Any = "leaf"
    for _ in range(depth):
        deep = [deep]
    return deep


HUGE = {
    "shared_rows": lambda: [{"text": "x" * 1000, "n": 1.5}] * 1_000_000,  # ~1 GB of JSON from 8 MB of memory
    "one_long_text": lambda: "é" * 20_000_000,
    "wide_object": lambda: {f"k{i}": i for i in range(300_000)},
    "deep_list": lambda: nested(200_000),  # deeper than any recursive encoder goes
}


@pytest.mark.parametrize("name", sorted(HUGE))
def test_a_huge_value_is_refused_without_being_serialised(name: str) -> None:
    value = HUGE[name]()
    limit = 128 << 10
    sizes: list[int] = []
    peak = peak_bytes_while(lambda: sizes.append(encoded_size(value, limit)))
    assert sizes[0] > limit
    assert peak < 8 << 20, f"measuring took {peak} bytes"
    err = value_too_large(value, limit, what="the output of stage s", path="root.stages[1]")
    assert err is not None and err.code == "value_too_large" and err.path == "root.stages[1]"
    assert "the output of stage s is larger than the 128 KiB a value may have" in err.message
    assert err.details == {"limit_bytes": limit}


def test_a_value_at_the_limit_passes() -> None:
    value = {"a": ["b" * 10, 1, None]}
    n = len(serde_compact(value))
    assert value_too_large(value, n, what="v") is None
    assert value_too_large(value, n - 1, what="v") is not None


def test_what_is_not_json_is_refused_like_the_encoder_does() -> None:
    with pytest.raises(TypeError):
        encoded_size({"a": object()}, 100)
    with pytest.raises(TypeError):
        encoded_size({1: "non-text key"}, 100)
