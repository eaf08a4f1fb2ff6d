"""`noether check` / `noether run --dry-run` through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.test_stage_cli import noether

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_check_hello_example() -> None:
    _, out, _ = noether("check", str(EXAMPLES / "hello.json"))
    data = out["data"]
    assert out["command"] == "check"
    assert data["type_check"] == {"input": "Any", "output": "Text"}
    assert data["plan"]["steps"] == 2
    assert len(data["composition_id"]) == 64
    _, dry, _ = noether("run", "--dry-run", str(EXAMPLES / "hello.json"))
    assert dry["data"]["composition_id"] == data["composition_id"]


def test_reference_error_exits_1_and_check_error_exits_2(tmp_path: Path) -> None:
    g = tmp_path / "g.json"
    g.write_text(json.dumps({"description": "d", "version": "1", "root": {"op": "Stage", "id": "no_such"}}))
    _, _, err = noether("check", str(g), check_rc=1)
    assert err["error"]["code"] == "stage_not_found"
    g.write_text(json.dumps({"description": "d", "version": "1", "root": {"op": "Sequential", "stages": [
        {"op": "Stage", "id": "text_length"}, {"op": "Stage", "id": "text_upper"}]}}))
    _, _, err = noether("check", str(g), check_rc=2)
    assert err["error"]["code"] == "type_mismatch"
    assert err["error"]["path"] == "root.stages[1]"


def test_run_hello_prints_output_and_trace() -> None:
    _, out, _ = noether("run", str(EXAMPLES / "hello.json"))
    data = out["data"]
    assert data["output"] == "HELLO, WORLD!"
    stages = data["trace"]["stages"]
    assert [s["name"] for s in stages] == ["greet", "text_upper"]
    assert stages[0]["isolation"] == "bwrap" and stages[1]["isolation"] == "in-process"
    assert [s["node_path"] for s in stages] == ["root.stages[0]", "root.stages[1]"]
