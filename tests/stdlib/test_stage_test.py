"""`stage test`: every stdlib stage's examples, run for real through the engine."""

from __future__ import annotations

from typing import Any

import msgspec

from noether_nix.engine.engine import Engine
from noether_nix.model.stage import stage_from_spec
from noether_nix.service.stage_test import stage_test_error
from noether_nix.service.stage_test import stage_tests as run_stage_tests
from noether_nix.stdlib.registry import CATEGORY


async def test_every_runnable_stdlib_example_passes() -> None:
    engine = Engine()
    data = await run_stage_tests(engine)
    by_name = {engine.store.get(s["id"]).name: s for s in data["stages"]}  # type: ignore[union-attr]
    assert data["total"] == 85 and data["failed"] == 0, [s for s in data["stages"] if s["status"] == "failed"]
    assert data["passed"] + data["skipped"] == 85
    for name, category in CATEGORY.items():
        if category == "pure":
            assert by_name[name]["status"] == "passed", by_name[name]
    # Skipped for upstream's reasons, or because the examples name stages no store has.
    assert by_name["http_get"]["details"] == "skipped: Network"
    assert by_name["llm_complete"]["details"] == "skipped: Llm"
    assert by_name["text_hash"]["details"] == "skipped: NonDeterministic"
    assert "NamesAMissingStage" in by_name["map"]["details"]
    assert stage_test_error(data) is None


async def test_a_wrong_example_fails_with_expected_and_actual() -> None:
    engine = Engine()
    spec: dict[str, Any] = {
        "name": "double", "input": "Number", "output": "Number",
        "implementation": {"language": "python", "code": "def execute(x):\n    return x * 2\n"},
        "examples": [{"input": 2, "output": 4}, {"input": 3, "output": 7}],
    }
    stage = stage_from_spec(spec)
    engine.store.add(msgspec.structs.replace(stage, lifecycle="Active"))
    data = await run_stage_tests(engine, stage.id[:12])
    assert data["total"] == 1 and data["failed"] == 1
    assert data["stages"][0]["details"] == "example 1: expected 7, got 6"
    err = stage_test_error(data)
    assert err is not None and err.code == "stage_test_failed" and err.exit_code == 1
