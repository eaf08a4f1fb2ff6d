"""Every catalog example of every in-process stdlib stage reproduces (compared as JCS)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from noether_nix.model.jcs import jcs
from noether_nix.stdlib.registry import PURE, StageFailure

CATALOG = {s["name"]: s for s in json.loads(
    (Path(__file__).resolve().parents[3] / "shared" / "spec" / "stdlib-catalog.json").read_text())}
CASES = [(name, i, ex) for name in sorted(PURE) for i, ex in enumerate(CATALOG[name]["examples"])]


@pytest.mark.parametrize(("name", "i", "example"), CASES, ids=[f"{n}[{i}]" for n, i, _ in CASES])
def test_example(name: str, i: int, example: dict[str, Any]) -> None:
    assert jcs(PURE[name](example["input"])) == jcs(example["output"])


def test_only_pure_stages_run_in_process() -> None:
    for name in PURE:
        kinds = {e["effect"] for e in CATALOG[name]["effects"]["effects"]}
        assert kinds <= {"Pure", "Fallible"}, name


@pytest.mark.parametrize(("name", "bad"), [("text_upper", 3), ("head", []), ("num_avg", ["x"]),
                                           ("parse_json", "{nope"), ("text_template", {"template": "x"})])
def test_bad_input_is_a_clear_failure(name: str, bad: Any) -> None:
    with pytest.raises(StageFailure) as ei:
        PURE[name](bad)
    assert str(ei.value)
