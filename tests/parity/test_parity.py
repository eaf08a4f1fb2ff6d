"""Every graph runs the same over the socket as embedded.

Each case runs twice through the real CLI on one store: ``--socket`` (a live
daemon) and ``--local`` (embedded), and both runs must agree on the exit
code, the envelope's ``ok``, the run's status, output and error code, and
the stages the trace records. The cases are every graph in ``examples/``
and graphs built to stress concurrency: Parallel of 24 sandboxed stages, a
Let whose body is a Parallel, a Fanout of sandboxed stages, ``map`` over a
sandboxed stage, budget refusals, a failing stage and a timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.sandbox_access import example_files
from tests.server.test_daemon_cli import start_daemon, stop

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

PY_UPPER = {"name": "py_upper", "description": "upper-case in the sandbox (parity)", "input": "Text",
            "output": "Text", "effects": ["Pure"],
            "implementation": "def execute(x):\n    return x.upper()\n"}
PY_FAIL = {"name": "py_fail", "description": "always fails (parity)", "input": "Any", "output": "Any",
           "effects": ["Fallible"], "implementation": "def execute(x):\n    raise ValueError('no luck: %r' % (x,))\n"}
PY_SLOW = {"name": "py_slow", "description": "sleeps past its timeout (parity)", "input": "Any", "output": "Any",
           "effects": ["Pure"], "implementation": "import time\ndef execute(x):\n    time.sleep(30)\n    return x\n"}


def stage(ref: str) -> dict[str, Any]:
    return {"op": "Stage", "id": ref}


def graph(root: dict[str, Any]) -> dict[str, Any]:
    return {"description": "parity", "version": "1", "stages": ["py_upper.json", "py_fail.json", "py_slow.json"],
            "root": root}


CONCURRENT: dict[str, tuple[dict[str, Any], list[str], int]] = {
    # name: (graph, extra CLI args, exit code)
    "parallel_24_sandboxed": (graph({"op": "Parallel", "branches": {f"b{i:02d}": stage("py_upper")
                                                                     for i in range(24)}}),
                              ["--input", '"twenty-four"'], 0),
    "let_with_a_parallel_body": (graph({"op": "Let", "bindings": {"x": stage("py_upper"), "y": stage("shout")},
                                        "body": {"op": "Parallel", "branches": {
                                            "x": {"op": "Stage", "id": "text_length"},
                                            "y": {"op": "Stage", "id": "py_upper"}}}}),
                                 ["--input", '"let me"'], 0),
    "fanout_sandboxed": (graph({"op": "Fanout", "source": stage("py_upper"),
                                "targets": [stage("py_upper"), stage("shout"), stage("text_length")]}),
                         ["--input", '"fan"'], 0),
    "map_over_a_sandboxed_stage": (graph({"op": "Stage", "id": "map", "config": {"stage_id": "py_upper"}}),
                                   ["--input", json.dumps([f"item {i}" for i in range(12)])], 0),
    "a_failing_stage": (graph({"op": "Parallel", "branches": {"ok": stage("py_upper"), "bad": stage("py_fail")}}),
                        ["--input", '"boom"'], 3),
    "a_timeout": (graph({"op": "Sequential", "stages": [stage("py_upper"), stage("py_slow")]}),
                  ["--input", '"slow"', "--timeout-secs", "2"], 3),
    "a_budget_refusal_before_the_run": (graph({"op": "Stage", "id": "paid_lookup"}),
                                        ["--input", '"x"', "--budget-cents", "1"], 2),
}


class Both:
    """One store, served by a daemon; runs through it and embedded."""

    def __init__(self, home: Path, client: Path, sock: Path) -> None:
        self.home, self.client, self.sock = home, client, sock

    def _cli(self, home: Path, *args: str) -> tuple[int, dict[str, Any], str]:
        env = {k: v for k, v in os.environ.items() if k not in ("NOETHER_SOCKET", "NOETHER_LOCAL")}
        env.update(NOETHER_HOME=str(home), XDG_RUNTIME_DIR=str(home))
        proc = subprocess.run([sys.executable, "-m", "noether_nix.cli.main", *args], capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, env=env, timeout=600)
        assert not proc.stderr.lstrip().startswith("{"), f"an envelope on stderr: {proc.stderr[:300]}"
        return proc.returncode, json.loads(proc.stdout), proc.stderr  # exactly one envelope on stdout

    def via_daemon(self, *args: str) -> tuple[int, dict[str, Any], str]:
        return self._cli(self.client, "--socket", str(self.sock), *args)

    def embedded(self, *args: str) -> tuple[int, dict[str, Any], str]:
        return self._cli(self.home, "--local", *args)


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Both]:
    tmp = tmp_path_factory.mktemp("parity")
    home, client = tmp / "store", tmp / "client"
    home.mkdir()
    client.mkdir()
    sock = tmp / "run" / "noether.sock"
    sock.parent.mkdir()
    proc = start_daemon(home, sock)
    try:
        yield Both(home, client, sock)
    finally:
        stop(proc)


def summary(rc: int, env: dict[str, Any]) -> dict[str, Any]:
    """What must agree between the two modes. A failed run's trace records
    what had finished when the first failure cancelled the rest, which
    depends on timing: only its failures are compared."""
    data = env.get("data") or {}
    trace = data.get("trace") or {}
    stages = trace.get("stages", [])
    if data.get("status") != "ok":
        stages = [s for s in stages if s["status"] != "Ok"]
    return {
        "exit_code": rc,
        "ok": env["ok"],
        "status": data.get("status"),
        "output": data.get("output"),
        "error_code": (env.get("error") or {}).get("code"),
        "stages": sorted((s["node_path"], s.get("name"), json.dumps(s["status"], sort_keys=True)[:60])
                         for s in stages),
    }


def assert_same(both: Both, graph_file: Path, args: list[str], rc: int) -> dict[str, Any]:
    common = ["run", str(graph_file), "--json", "--no-cache", *args]
    via = both.via_daemon(*common)
    local = both.embedded(*common)
    got_via, got_local = summary(via[0], via[1]), summary(local[0], local[1])
    assert got_via == got_local, (via, local)
    assert got_via["exit_code"] == rc, via
    return got_via


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("parity-graphs")
    for spec in (PY_UPPER, PY_FAIL, PY_SLOW):
        (d / f"{spec['name']}.json").write_text(json.dumps(spec))
    for name in ("shout.json", "paid_lookup.json"):
        shutil.copy(EXAMPLES / "stages" / name, d / name)
    return d


@pytest.mark.parametrize("name", sorted(CONCURRENT))
def test_concurrent_graphs_run_the_same(both: Both, specs: Path, name: str) -> None:
    g, args, rc = CONCURRENT[name]
    g = {**g, "stages": [*g["stages"], "shout.json", "paid_lookup.json"]}
    path = specs / f"{name}.json"
    path.write_text(json.dumps(g))
    got = assert_same(both, path, args, rc)
    if name == "parallel_24_sandboxed":
        assert got["output"] == {f"b{i:02d}": "TWENTY-FOUR" for i in range(24)}
        assert len(got["stages"]) == 24
    elif name == "map_over_a_sandboxed_stage":
        assert got["output"] == [f"ITEM {i}" for i in range(12)]
    elif name == "a_failing_stage":
        assert got["error_code"] == "stage_error" and got["status"] == "failed"
    elif name == "a_timeout":
        assert got["error_code"] == "stage_timed_out"
    elif name == "a_budget_refusal_before_the_run":
        assert got["error_code"] == "budget_exceeded" and got["status"] is None


def example_cases(url: str) -> dict[str, tuple[list[str], int]]:
    return {
        "hello.json": ([], 0),
        "operators.json": ([], 0),
        "budget.json": (["--input", '"x"', "--budget-cents", "12"], 0),
        "network.json": (["--input", json.dumps({"url": url})], 0),
        "files.json": ([], 0),
    }


def test_every_example_runs_the_same(both: Both, local_http_server: str) -> None:
    cases = example_cases(local_http_server)
    assert set(cases) == {p.name for p in EXAMPLES.glob("*.json")}, "a new example needs a parity case"
    with example_files():  # files.json's paths
        for name, (args, rc) in cases.items():
            got = assert_same(both, EXAMPLES / name, args, rc)
            assert got["ok"] and got["status"] == "ok", (name, got)
    # The budget example refused at run time (not before): the same in both modes.
    got = assert_same(both, EXAMPLES / "budget.json", ["--input", '"x"', "--budget-cents", "10"], 2)
    assert got["error_code"] == "budget_exceeded"
