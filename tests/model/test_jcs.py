"""JCS as upstream's serde_jcs emits it, and serde-compact numbers."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from noether_nix.model.jcs import (
    ecmascript_number,
    fits,
    jcs,
    ryu_number,
    serde_compact,
    size_bounds,
)
from tests.model.strategies import json_values


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.0, "0"), (-0.0, "0"), (100.0, "100"), (0.5, "0.5"), (1e21, "1e+21"),
     (1e20, "100000000000000000000"), (1e-7, "1e-7"), (1e-6, "0.000001"), (123.456, "123.456"),
     (-2.5e-8, "-2.5e-8")],
)
def test_ecmascript_numbers(value: float, text: str) -> None:
    assert ecmascript_number(value) == text


@pytest.mark.parametrize(
    ("value", "text"), [(1.0, "1.0"), (100.0, "100.0"), (1e16, "1e16"), (1e-7, "1e-7"), (0.5, "0.5")]
)
def test_serde_numbers(value: float, text: str) -> None:
    assert ryu_number(value) == text


def test_integers_stay_integers_and_huge_ones_become_doubles() -> None:
    assert jcs(2**63) == b"9223372036854775808"
    assert jcs(2**64) == b"18446744073709552000"
    assert jcs(1.0) == jcs(1) == b"1"


def test_key_order_is_by_escaped_quoted_bytes() -> None:
    # '"a b"' < '"a"' because ' ' (0x20) < '"' (0x22): serde_jcs, not RFC 8785.
    assert jcs({"a": 1, "a b": 2}) == b'{"a b":2,"a":1}'
    assert jcs({"b": [1, 2.5, "x", None], "a": {"z": True, "y": False}}) == (
        b'{"a":{"y":false,"z":true},"b":[1,2.5,"x",null]}'
    )


def test_strings_escape_like_serde() -> None:
    assert jcs("a\"b\\c\n\x01/é") == '"a\\"b\\\\c\\n\\u0001/é"'.encode()
    assert serde_compact("\x1f") == b'"\\u001f"'


def _shuffled(v: Any, rng: random.Random) -> Any:
    if isinstance(v, dict):
        items = list(v.items())
        rng.shuffle(items)
        return {k: _shuffled(x, rng) for k, x in items}
    if isinstance(v, list):
        return [_shuffled(x, rng) for x in v]
    return v


@given(json_values)
def test_key_order_invariance(v: Any) -> None:
    assert jcs(_shuffled(v, random.Random(1))) == jcs(v)


def _num_eq(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_num_eq(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_num_eq(a[k], b[k]) for k in a)
    return bool(a == b)


@given(json_values)
def test_round_trip(v: Any) -> None:
    assert _num_eq(json.loads(jcs(v)), v)
    assert _num_eq(json.loads(serde_compact(v)), v)
    # Canonical bytes are a fixpoint.
    assert jcs(json.loads(jcs(v))) == jcs(v)


# A value without floats is written by the C encoder; it must be byte for byte the Python one.
_wide_ints = st.integers(min_value=-(2**70), max_value=2**70)
_mixed: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | _wide_ints | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=6), children, max_size=5),
    max_leaves=30,
)


def _python_encoder(value: Any) -> bytes:
    from noether_nix.model import jcs as module

    out: list[str] = []
    module._encode(value, out, ryu_number, module._plain_key)
    return "".join(out).encode("utf-8")


@settings(max_examples=500)
@given(_mixed)
def test_the_fast_serde_compact_is_the_python_one_and_bounds_hold(value: Any) -> None:
    try:
        expected = _python_encoder(value)
    except UnicodeEncodeError:  # a lone surrogate: neither encoder writes it
        return
    got = serde_compact(value)
    assert got == expected
    bounds = size_bounds(value, 1 << 30)
    if bounds is not None:
        assert bounds[0] <= len(got) <= bounds[1]
        tight = size_bounds(value, bounds[1] - 1)  # a limit under the upper bound: undecided
        assert tight is None
    assert fits(value, len(got)) and not fits(value, len(got) - 1)


def test_bounds_stop_at_their_limit_on_a_huge_value() -> None:
    """A value of a million records (a GB of JSON held in a few MB: one record shared)
    is not walked to the end to be refused: the walk stops once past the limit."""
    import time

    huge = [{"text": "x" * 1000}] * 1_000_000
    started = time.process_time()
    assert size_bounds(huge, 1 << 20) is None and not fits(huge, 1 << 20)
    assert time.process_time() - started < 1.0  # was 15 s of CPU (every record walked)


def test_what_goes_to_the_c_encoder() -> None:
    from noether_nix.model.jcs import _plain

    assert _plain(["a", {"b": [True, None, 2**63]}])
    assert not _plain([1.5]) and not _plain([2**64]) and not _plain({"a": [0.0]})  # ryu writes floats
    assert serde_compact([2**64]) == b"[1.8446744073709552e19]"  # past u64: serde_json reads a float
    assert serde_compact(["\u2028\x1f\"\\"]) == '["\u2028\\u001f\\"\\\\"]'.encode()


# Values a check must refuse too: lone surrogates, NaN and infinities, integers past 64 bits.
_odd_text = st.text(st.characters(codec=None), max_size=4) | st.text(st.sampled_from("aé\x1f\"\\\ud800\udfff"),
                                                                   max_size=4)
_hostile: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | _wide_ints | st.floats() | _odd_text,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(_odd_text, children, max_size=4),
    max_leaves=30,
)


@settings(max_examples=500)
@given(_hostile, st.integers(0, 400), st.integers(1, 8))
def test_the_quick_check_only_passes_what_the_walk_accepts(value: Any, limit: int, max_depth: int) -> None:
    """``quick_check`` (one pass, a container at a time) never passes a value the strict walk
    refuses or measures over the limit; what it calls plain, the C encoder writes exactly."""
    from noether_nix.errors import NoetherError
    from noether_nix.model.jcs import (
        QUICK_PLAIN,
        QUICK_UNDECIDED,
        _plain,
        encoded_size,
        quick_check,
        value_hash,
    )

    got = quick_check(value, limit, max_depth)
    if got == QUICK_UNDECIDED:
        return
    try:
        size = encoded_size(value, limit, strict=True, max_depth=max_depth)
    except NoetherError as e:
        raise AssertionError(f"quick_check passed what the walk refuses: {e.message}") from None
    assert size <= limit
    if got == QUICK_PLAIN:
        assert _plain(value)
        assert serde_compact(value, plain=True) == _python_encoder(value)
        assert value_hash(value, plain=True) == value_hash(value)


def test_the_quick_check_decides_large_plain_lists_and_says_which_are_plain() -> None:
    from noether_nix.model.jcs import QUICK_PLAIN, QUICK_UNDECIDED, QUICK_VALID, quick_check

    texts = [f"w{i}" for i in range(1000)]
    assert quick_check(texts, 1 << 20, 128) == QUICK_PLAIN
    assert quick_check({"items": texts, "n": 3, "ok": True}, 1 << 20, 128) == QUICK_PLAIN
    assert quick_check({"items": texts, "x": 0.5}, 1 << 20, 128) == QUICK_VALID  # ryu writes floats
    assert quick_check([[1.5]], 1 << 20, 128) == QUICK_VALID
    for bad in (["ok", "\ud800"], [float("nan")], [[float("inf")]], [2**64], {"\udfff": 1}, {1: "x"}, [object()]):
        assert quick_check(bad, 1 << 20, 128) == QUICK_UNDECIDED, bad
    assert quick_check(texts, 100, 128) == QUICK_UNDECIDED  # over the limit: the walk decides
    assert quick_check([[["x"]]], 1 << 20, 3) == QUICK_UNDECIDED  # as deep as allowed: the walk decides


def test_a_subclass_of_text_is_written_by_the_python_encoder() -> None:
    """A join takes subclasses of ``str`` as text; the C encoder refuses them, and the hash
    falls back to the Python encoder rather than fail."""
    from noether_nix.model.jcs import value_hash

    class Text(str):
        pass

    value = [Text("a"), "b", {"k": Text("c")}]
    assert serde_compact(value) == serde_compact(value, plain=True) == b'["a","b",{"k":"c"}]'
    assert value_hash(value, plain=True) == value_hash(["a", "b", {"k": "c"}])


@pytest.mark.parametrize("shape", ["list", "record", "mixed"])
def test_a_value_holding_one_text_many_times_is_refused_without_building_it(shape: str) -> None:
    """A Parallel whose branches all return their input makes a record of one text many
    times over: measuring it must not build every copy (a thousand branches over 1 MB
    of input built a gigabyte before the refusal)."""
    import tracemalloc

    from noether_nix.errors import NoetherError
    from noether_nix.model.values import check_value

    big = "x" * (1 << 20)
    value: Any = {"list": [big] * 100, "record": {f"b{i}": big for i in range(100)},
                  "mixed": [big] * 100 + [1, None]}[shape]
    tracemalloc.start()
    try:
        with pytest.raises(NoetherError) as e:
            check_value(value, 32 << 20, what="the output")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert e.value.code == "value_too_large"
    assert peak < 4 << 20, f"{peak / 2**20:.0f} MiB allocated to refuse a 100 MiB value held in 1 MiB"
