"""Every catalog example of every in-process stage reproduces (compared as JCS), and every stage has a category."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from noether_nix.model.jcs import jcs
from noether_nix.stdlib.registry import CATEGORY, HIGHER_ORDER, PURE, SANDBOXED, sandboxed_source
from tests.model.strategies import json_values
from tests.stdlib.conftest import load_catalog

CATALOG = {s["name"]: s for s in load_catalog()}
CASES = [(name, i, ex) for name in PURE for i, ex in enumerate(CATALOG[name]["examples"])]


def _kinds(name: str) -> set[str]:
    return {e["effect"] for e in CATALOG[name]["effects"]["effects"]}


@pytest.mark.parametrize(("name", "i", "example"), CASES, ids=[f"{n}[{i}]" for n, i, _ in CASES])
def test_example(name: str, i: int, example: dict[str, Any]) -> None:
    assert jcs(PURE[name](example["input"])) == jcs(example["output"])


def test_every_catalog_stage_has_exactly_one_category() -> None:
    assert set(CATEGORY) == set(CATALOG)
    assert len(CATEGORY) == 85


def test_only_pure_stages_run_in_process() -> None:
    for name in PURE:
        assert _kinds(name) <= {"Pure", "Fallible"}, name


def test_every_pure_stage_that_needs_no_engine_is_implemented() -> None:
    engine_needed = set(HIGHER_ORDER) | {n for n, c in CATEGORY.items() if c in ("kv", "store")}
    for name in CATALOG:
        if _kinds(name) <= {"Pure", "Fallible"} and name not in engine_needed and name != "write_file":
            assert name in PURE, name


def test_stages_with_world_effects_are_never_in_process() -> None:
    for name, category in CATEGORY.items():
        if _kinds(name) & {"Network", "Process", "NonDeterministic", "Llm"}:
            assert category != "pure", name
    # write_file declares only Fallible upstream, but it writes files.
    assert CATEGORY["write_file"] == "sandboxed"


@pytest.mark.parametrize("name", SANDBOXED)
def test_sandboxed_source_is_a_program_with_execute(name: str) -> None:
    source = sandboxed_source(name)
    namespace: dict[str, Any] = {}
    exec(compile(source, f"{name}.py", "exec"), namespace)
    assert callable(namespace["execute"])


@pytest.mark.parametrize(("name", "i", "example"), CASES, ids=[f"{n}[{i}]" for n, i, _ in CASES])
def test_no_in_process_stage_changes_its_input(name: str, i: int, example: dict[str, Any]) -> None:
    """The engine remembers a large value it has checked by identity (``Passed``,
    ``Interpreter.known_values``): that holds only while no stage changes its input
    in place."""
    import copy

    given_input = copy.deepcopy(example["input"])
    with contextlib.suppress(Exception):  # an example that fails still must not change its input
        PURE[name](given_input)
    assert jcs(given_input) == jcs(example["input"])


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(PURE)), json_values)
def test_no_in_process_stage_changes_any_input(name: str, value: Any) -> None:
    import copy

    before = copy.deepcopy(value)
    with contextlib.suppress(Exception):  # most random inputs are refused: only what happens to them counts
        PURE[name](value)
    assert jcs(value) == jcs(before), name


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(CASES), st.data())
def test_no_in_process_stage_changes_an_input_shaped_like_its_examples(case: tuple[str, int, dict[str, Any]],
                                                                        data: st.DataObject) -> None:
    """Random values are mostly refused at a stage's first field check: here an example's
    input with one field (or, for a list, one item) replaced by a random value, so the
    stage gets past its checks and works on it."""
    import copy

    name, _, example = case
    value = copy.deepcopy(example["input"])
    if isinstance(value, dict) and value:
        value[data.draw(st.sampled_from(sorted(value)))] = data.draw(json_values)
    elif isinstance(value, list) and value:
        value[data.draw(st.integers(0, len(value) - 1))] = data.draw(json_values)
    else:
        value = data.draw(json_values)
    before = copy.deepcopy(value)
    with contextlib.suppress(Exception):
        PURE[name](value)
    assert jcs(value) == jcs(before), name
