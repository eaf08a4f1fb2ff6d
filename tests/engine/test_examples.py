"""End-to-end: every example graph runs for real (Nix-built programs in bwrap) with its exact output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli.test_stage_cli import noether
from tests.sandbox_access import example_files

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(name: str, *args: str, rc: int = 0) -> tuple[Any, Any]:
    _, out, err = noether("run", str(EXAMPLES / name), "--json", *args, check_rc=rc)
    return out, err


def test_hello() -> None:
    out, _ = run("hello.json")
    assert out["data"]["output"] == "HELLO, WORLD!"


def test_every_operator_across_three_languages() -> None:
    out, _ = run("operators.json")
    assert out["data"]["output"] == {
        "fan": ["FAN OUT", 2],
        "long": "long",
        "loud": "HELLO, WORLD!",
        "merged": "Merged: merge",
        "words": 4,
    }
    languages = {s["name"] for s in out["data"]["trace"]["stages"]}
    assert {"greet", "shout", "word_count"} <= languages  # python, bash, javascript
    paths = [s["node_path"] for s in out["data"]["trace"]["stages"]]
    assert len(paths) == len(set(paths))  # node paths are unique, unlike upstream's step_index


def test_fs_read_and_write() -> None:
    with example_files() as base:
        out, _ = run("files.json")
        assert out["data"]["output"] == len("HELLO FILES")
        assert (base / "out" / "result.txt").read_text() == "HELLO FILES"


def test_fs_paths_must_exist_before_running() -> None:
    with example_files(create=False):
        _, err = run("files.json", rc=3)
    assert err["error"]["code"] == "execution failed" or "does not exist" in err["error"]["message"]


def test_network_stage_reaches_a_local_server(local_http_server: str) -> None:
    out, _ = run("network.json", "--input", json.dumps({"url": local_http_server}))
    assert out["data"]["output"] == "served locally"


@pytest.mark.parametrize(("budget", "rc"), [("12", 0), ("10", 2)])
def test_budgeted_graph(budget: str, rc: int) -> None:
    out, err = run("budget.json", "--input", '"x"', "--budget-cents", budget, rc=rc)
    if rc == 0:
        assert out["data"]["output"] == {"a": "x!", "b": "x!", "c": "x!"}
        assert out["data"]["spent_cents"] == 12
    else:
        assert err["error"]["code"] == "budget_exceeded"
