"""The parity graphs through a daemon whose executor is the REAPI cluster.

The same cases as tests/parity (every example, and the concurrency-heavy
graphs), each run through a live daemon configured with ``--executor remote
--reapi URL`` and embedded with the local executor, on one store: exit code,
status, output, error code and the trace's stages must agree.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.parity.test_parity import (
    CONCURRENT,
    EXAMPLES,
    PY_FAIL,
    PY_SLOW,
    PY_UPPER,
    Both,
    assert_same,
    example_cases,
    summary,
)
from tests.remote.conftest import Cluster, start_cluster
from tests.sandbox_access import example_files
from tests.server.test_daemon_cli import stop, wait_for_socket

FILES_BASE = "/var/tmp/noether-example"  # examples/files.json's paths


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    Path(FILES_BASE).mkdir(parents=True, exist_ok=True)
    c = start_cluster(tmp_path_factory.mktemp("reapi-parity"), workers=0)
    try:
        grants = ["--network", "--allow-read", FILES_BASE, "--allow-write", FILES_BASE]
        c.add_workers([("parity-1", *grants, "--concurrency", "4"), ("parity-2", *grants, "--concurrency", "4")])
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory, cluster: Cluster) -> Iterator[Both]:
    tmp = tmp_path_factory.mktemp("remote-parity")
    home, client = tmp / "store", tmp / "client"
    home.mkdir()
    client.mkdir()
    sock = tmp / "run" / "noether.sock"
    sock.parent.mkdir()
    import os

    proc = subprocess.Popen([sys.executable, "-m", "noether_nix.cli.main", "daemon", "--socket", str(sock),
                             "--executor", "remote", "--reapi", cluster.url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "NOETHER_HOME": str(home)})
    wait_for_socket(sock, proc)
    try:
        yield Both(home, client, sock)
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("remote-parity-graphs")
    for spec in (PY_UPPER, PY_FAIL, PY_SLOW):
        (d / f"{spec['name']}.json").write_text(json.dumps(spec))
    for name in ("shout.json", "paid_lookup.json"):
        shutil.copy(EXAMPLES / "stages" / name, d / name)
    return d


def workers_ran(cluster: Cluster) -> int:
    return sum(1 for w in cluster.workers for e in w.events() if e.get("event") == "lease_done")


@pytest.mark.parametrize("name", sorted(CONCURRENT))
def test_concurrent_graphs_run_the_same_remotely(both: Both, cluster: Cluster, specs: Path, name: str) -> None:
    g, args, rc = CONCURRENT[name]
    g = {**g, "stages": [*g["stages"], "shout.json", "paid_lookup.json"]}
    path = specs / f"{name}.json"
    path.write_text(json.dumps(g))
    before = workers_ran(cluster)
    if name == "a_failing_stage":
        # The first failure cancels its siblings: whether the "ok" branch finished
        # before that depends on timing (remote calls take longer), so the traces
        # agree on the failure, not on the cancelled sibling.
        common = ["run", str(path), "--json", "--no-cache", *args]
        via, local = summary(*both.via_daemon(*common)[:2]), summary(*both.embedded(*common)[:2])
        failed = [s for s in via["stages"] if "Failed" in s[2]]
        assert failed == [s for s in local["stages"] if "Failed" in s[2]] and failed
        assert {k: v for k, v in via.items() if k != "stages"} == {k: v for k, v in local.items() if k != "stages"}
        assert via["exit_code"] == rc and via["error_code"] == "stage_error"
        assert workers_ran(cluster) > before
        return
    got = assert_same(both, path, args, rc)
    if name == "parallel_24_sandboxed":
        assert got["output"] == {f"b{i:02d}": "TWENTY-FOUR" for i in range(24)}
    elif name == "a_timeout":
        assert got["error_code"] == "stage_timed_out"
    if name != "a_budget_refusal_before_the_run":
        assert workers_ran(cluster) > before, "the daemon's stages did not run on the cluster"


def test_every_example_runs_the_same_remotely(both: Both, cluster: Cluster, local_http_server: str) -> None:
    with example_files():  # files.json's paths
        for name, (args, rc) in example_cases(local_http_server).items():
            got = assert_same(both, EXAMPLES / name, args, rc)
            assert got["ok"] and got["status"] == "ok", (name, got)


def test_a_pure_graph_run_again_comes_from_the_action_cache(both: Both, specs: Path) -> None:
    """A Pure graph run with --no-cache runs on the cluster (and leaves nothing in
    the daemon's own pure cache); run again, the cluster's ActionCache answers and
    the trace says so; run with --no-cache again, no cache answers: a worker runs it."""
    path = specs / "pure_twice.json"
    path.write_text(json.dumps({"description": "pure twice", "version": "1", "stages": ["py_upper.json"],
                                "root": {"op": "Stage", "id": "py_upper"}}))
    args = ["run", str(path), "--json", "--input", '"cache me remotely"']
    first, second, third = (both.via_daemon(*args, "--no-cache"), both.via_daemon(*args),
                            both.via_daemon(*args, "--no-cache"))
    for run in (first, second, third):
        assert run[1]["data"]["output"] == "CACHE ME REMOTELY"
    (e1,), (e2,), (e3,) = (run[1]["data"]["trace"]["stages"] for run in (first, second, third))
    assert "cached" not in e1 and e1["remote"]["worker"] in ("parity-1", "parity-2")
    assert e2["cached"] is True and e2["remote"]["cached"] is True
    assert e2["remote"]["action_digest"] == e1["remote"]["action_digest"] == e3["remote"]["action_digest"]
    assert "cached" not in e3 and e3["remote"]["cached"] is False and e3["remote"]["worker"] in ("parity-1", "parity-2")


def test_an_impure_graph_is_never_served_from_the_action_cache(both: Both, specs: Path) -> None:
    spec = {"name": "py_random", "description": "impure (parity)", "input": "Any", "output": "Number",
            "effects": ["NonDeterministic"], "implementation": "import random\ndef execute(x):\n    return random.random()\n"}
    (specs / "py_random.json").write_text(json.dumps(spec))
    path = specs / "impure_twice.json"
    path.write_text(json.dumps({"description": "impure twice", "version": "1", "stages": ["py_random.json"],
                                "root": {"op": "Stage", "id": "py_random"}}))
    args = ["run", str(path), "--json", "--input", "null"]
    first, second = both.via_daemon(*args), both.via_daemon(*args)
    assert first[1]["data"]["output"] != second[1]["data"]["output"]
    for run in (first, second):
        (entry,) = run[1]["data"]["trace"]["stages"]
        assert "cached" not in entry and entry["remote"]["cached"] is False
