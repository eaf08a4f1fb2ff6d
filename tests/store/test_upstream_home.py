"""Upstream's store.json in $NOETHER_HOME is imported once, and said so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from noether_nix.model.stage import stage_from_spec, stage_to_json
from noether_nix.store.stages import StageStore
from noether_nix.store.upstream import import_home_store


def upstream_stage(name: str, language: str = "python") -> dict[str, object]:
    code = "def execute(x):\n    return x\n" if language == "python" else "pub fn execute(x: String) -> String { x }"
    doc = stage_to_json(stage_from_spec({"name": name, "input": "Text", "output": "Text", "language": language,
                                         "implementation": code}))
    doc["lifecycle"] = "Active"
    return doc


def test_store_json_is_imported_once(noether_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, rust = upstream_stage("echo_text"), upstream_stage("counter", "rust")
    forged = {**upstream_stage("forged"), "id": "0" * 64}
    (noether_home / "store.json").write_text(json.dumps({"stages": [good, rust, forged]}))
    store = StageStore(noether_home / "noether.db")
    report = import_home_store(store, noether_home)
    assert report is not None
    assert (report["imported"], report["already_present"]) == (2, 0)
    [invalid] = report["invalid"]
    assert invalid["index"] == 2 and invalid["error"].startswith("stages[2].id: stage id 0000000000000000… does not "
                                                                 "match its content")
    said = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert said[-1]["event"] == "imported_upstream_store"
    assert said[-1]["message"] == (f"imported 2 stage(s) from {noether_home / 'store.json'} (upstream noether's store; 1 could not be "
            "read and were left out); this file is not imported again")
    assert store.get(str(good["id"])) is not None and store.get(str(rust["id"])).implementation_language == "rust"
    # Once: the same file again is nothing to do.
    assert import_home_store(store, noether_home) is None
    # Upstream still in use: a changed file brings what is new.
    (noether_home / "store.json").write_text(json.dumps({"stages": [good, upstream_stage("shout_text")]}))
    again = import_home_store(store, noether_home)
    assert again is not None and (again["imported"], again["already_present"]) == (1, 1)


def test_no_store_json_is_nothing_to_do(noether_home: Path) -> None:
    assert import_home_store(StageStore(noether_home / "noether.db"), noether_home) is None


def test_the_first_command_in_a_home_imports_it(noether_home: Path) -> None:
    from noether_nix.service.context import Context, me

    (noether_home / "store.json").write_text(json.dumps({"stages": [upstream_stage("from_upstream")]}))
    ctx = Context(me(), make_engine=lambda: None)  # type: ignore[arg-type,return-value]
    assert [s.name for s in ctx.store.by_name("from_upstream")] == ["from_upstream"]
