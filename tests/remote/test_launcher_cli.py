"""``noether launch --protocol 1``: what a Buildbarn (or any) runner executes in an input root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from noether_nix.engine.executor import StageCall
from noether_nix.model.effects import EffectSet, Network
from noether_nix.remote.action import encode_call, key_of
from noether_nix.remote.protos import noether_reapi_pb2 as re
from noether_nix.sandbox.policy import Limits


def input_root(tmp: Path, c: StageCall) -> Path:
    enc = encode_call(c)
    root = re.Directory()
    root.ParseFromString(enc.blobs[key_of(enc.action.input_root_digest)])
    d = tmp / "root"
    d.mkdir()
    for f in root.files:
        (d / f.name).write_bytes(enc.blobs[key_of(f.digest)])
    return d


def launch(d: Path, env: dict[str, str] | None = None) -> tuple[int, dict]:
    proc = subprocess.run([sys.executable, "-m", "noether_nix.cli.main", *encode_argv()], cwd=d, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})
    return proc.returncode, json.loads((d / "result.json").read_text())


def encode_argv() -> list[str]:
    from noether_nix.remote.action import LAUNCHER_ARGV

    return list(LAUNCHER_ARGV[1:])  # after "noether": the module is the entry point here


def call(effects: EffectSet) -> StageCall:
    return StageCall(program_id="launch-cli-upper", language="python", code="def execute(x):\n    return x.upper()\n",
                     effects=effects, input="runner", limits=Limits(), isolation="bwrap", label="t")


def test_the_launcher_runs_the_call_in_its_directory(tmp_path: Path) -> None:
    rc, record = launch(input_root(tmp_path, call(EffectSet.pure())))
    assert rc == 0
    assert record["result"]["status"] == "ok" and record["result"]["output"] == "RUNNER"
    assert record["result"]["isolation"] == "bwrap"


def test_the_launcher_grants_nothing_its_config_does_not(tmp_path: Path) -> None:
    d = input_root(tmp_path, call(EffectSet.of([Network()])))
    rc, record = launch(d)
    assert rc == 2 and record["error"]["code"] == "remote_refused" and "network" in record["error"]["message"]
    cfg = tmp_path / "grants.json"
    cfg.write_text(json.dumps({"network": True}))
    rc, record = launch(d, {"NOETHER_WORKER_CONFIG": str(cfg)})
    assert rc == 0 and record["result"]["output"] == "RUNNER"


def test_the_launcher_refuses_a_root_with_anything_else(tmp_path: Path) -> None:
    d = input_root(tmp_path, call(EffectSet.pure()))
    (d / "extra.sh").write_text("echo hi")
    rc, record = launch(d)
    assert rc == 2 and record["error"]["code"] == "remote_bad_action"
