"""Warmup builds runtimes and programs ahead of time; the collector leaves them runnable."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

from noether_nix.model.stage import Stage, stage_from_simple_spec
from noether_nix.nix.registry import ProgramRegistry
from noether_nix.nix.warmup import warmup
from noether_nix.paths import db_path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "stages"
ONLY_STORE = ["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/nix/store", "/nix/store",
              "--proc", "/proc", "--dev", "/dev", "--"]


def spec(name: str, language: str, code: str) -> Stage:
    return stage_from_simple_spec({"name": name, "input": "Any", "output": "Any",
                                   "implementation": {"language": language, "code": code}})


def stages(salt: str) -> list[Stage]:
    # A fresh salt makes fresh derivations, so the first warmup really builds.
    return [
        spec(f"py-{salt}", "python", f"def execute(x):\n    return ['{salt}', x]\n"),
        spec(f"sh-{salt}", "bash", f"execute() {{\n  printf '[\"%s\",%s]' '{salt}' \"$1\"\n}}\n"),
        spec(f"broken-{salt}", "bash", "execute() {\n  echo 'unterminated\n}\n"),
    ]


async def test_warmup_builds_then_hits_and_reports_progress() -> None:
    salt = uuid.uuid4().hex[:8]
    reg = ProgramRegistry(db_path())
    seen: list[dict[str, Any]] = []
    first = await warmup(stages(salt), reg, progress=seen.append)
    assert (first["total"], first["built"], first["cached"], first["done"]) == (3, 2, 0, 3)
    [failure] = first["failed"]
    assert failure["stage_id"] == stages(salt)[2].id
    assert failure["error"]["code"] == "stage_code_invalid"
    assert set(first["runtimes"]) == {"bash", "python"}
    assert [p["done"] for p in seen][-3:] == [1, 2, 3]  # one report per finished stage, in order
    again = await warmup(stages(salt), reg)
    assert (again["built"], again["cached"], len(again["failed"])) == (0, 2, 1)


async def test_every_warmed_program_survives_garbage_collection() -> None:
    salt = uuid.uuid4().hex[:8]
    reg = ProgramRegistry(db_path())
    examples = [stage_from_simple_spec(json.loads(p.read_text())) for p in sorted(EXAMPLES.glob("*.json"))]
    report = await warmup([*stages(salt)[:2], *examples], reg)
    assert report["done"] == report["total"] and not report["failed"], report["failed"]
    gc = subprocess.run(["nix-collect-garbage", "-d"], capture_output=True, text=True, timeout=300)
    assert gc.returncode == 0, gc.stderr
    programs = reg.programs()
    assert len(programs) == report["total"]
    for _stage_id, _runtime, program in programs:
        assert os.path.exists(program), program
    by_id = {stage_id: program for stage_id, _runtime, program in programs}
    for stage in stages(salt)[:2]:
        out = subprocess.run([*ONLY_STORE, f"{by_id[stage.id]}/bin/stage"], input=b"1", capture_output=True,
                             timeout=30)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == [salt, 1]


async def test_warmup_prepares_the_stdlib_programs_the_engine_runs(monkeypatch: Any) -> None:
    # The sandboxed stdlib stages (read_file, http_get, …) are built ahead of
    # time too, under the program IDs the engine looks up, so a first
    # read_file in a run costs no build.
    import noether_nix.stdlib.registry as registry
    from noether_nix.engine.engine import Engine, RunOptions

    monkeypatch.setattr(registry, "pyarrow_version", lambda: None)  # no 55 MB wheel in this test
    engine = Engine()
    report = await warmup([s for s in engine.store.all() if s.state == "Active"], engine.programs)
    assert report["total"] == len(registry.SANDBOXED) and not report["failed"], report["failed"]
    res = await engine.run({"description": "t", "version": "1", "root": {"op": "Stage", "id": "text_hash"}},
                           {"text": "abc", "algorithm": None}, RunOptions())
    assert res.status == "ok" and "build_ms" not in res.trace["stages"][0], res.trace
