"""Every store / graph command prints the same through a live daemon as embedded.

A real daemon serves a store; the CLI runs once with ``--socket`` from a
home that has no store of its own (so only the daemon can answer) and once
with ``--local`` on a store in the same state, and stdout, stderr and the
exit code must be identical (``meta.duration_ms`` aside).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from noether_nix.client import Client
from tests.server.test_daemon import wait_for_socket

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TAG = "daemon-cli-test"
ADD1 = {"name": "add1", "input": "Number", "output": "Number", "tags": [TAG],
        "implementation": "def execute(x):\n    return x + 1\n", "examples": [{"input": 1, "output": 2}]}
# Same name and types, other code: same signature, another stage id.
ADD1_V2 = {**ADD1, "implementation": "def execute(x):\n    return 1 + x\n"}
NEG = {"name": "neg", "input": "Number", "output": "Number", "tags": [TAG],
       "implementation": "def execute(x):\n    return -x\n", "examples": [{"input": 1, "output": -1}]}
_DURATION = re.compile(r'"duration_ms": ?\d+')


def normalise(text: str) -> str:
    return _DURATION.sub('"duration_ms": 0', text)


def cli(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # No daemon (not even on the default socket) unless ``env`` names one.
    full = {k: v for k, v in os.environ.items() if k not in ("NOETHER_SOCKET", "NOETHER_LOCAL")}
    full.update({"NOETHER_HOME": str(home), "XDG_RUNTIME_DIR": str(home), **(env or {})})
    return subprocess.run([sys.executable, "-m", "noether_nix.cli.main", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env=full, timeout=300)


def start_daemon(home: Path, sock: Path, config: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "noether_nix.cli.main", "daemon", "--socket", str(sock)]
    if config:
        cfg = home.parent / f"{home.name}-daemon.json"
        cfg.write_text(json.dumps(config))
        args += ["--config", str(cfg)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "NOETHER_HOME": str(home), **(env or {})})
    wait_for_socket(sock, proc)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@dataclass
class Setup:
    sock: Path
    store: Path  # the daemon's NOETHER_HOME
    client: Path  # the CLI's home when it talks to the daemon: it never gets a store
    tmp: Path

    def via(self, *args: str) -> subprocess.CompletedProcess[str]:
        return cli(self.client, "--socket", str(self.sock), *args)

    def local(self, *args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
        return cli(home or self.store, "--local", *args)

    def same(self, *args: str, rc: int = 0, home: Path | None = None) -> Any:
        """Run ``args`` via the daemon, then embedded (on ``home``, default the daemon's store)."""
        via = self.via(*args)
        local = self.local(*args, home=home)
        assert via.returncode == local.returncode == rc, (via.stderr, local.stderr)
        assert normalise(via.stdout) == normalise(local.stdout)
        assert normalise(via.stderr) == normalise(local.stderr)
        assert not (self.client / "noether.db").exists(), "the client opened a store of its own"
        text = via.stdout if via.stdout.strip() else via.stderr  # --human: the error goes to stderr
        return json.loads(text) if text.lstrip().startswith("{") else text

    def spec(self, name: str, doc: dict[str, Any]) -> str:
        path = self.tmp / f"{name}.json"
        path.write_text(json.dumps(doc))
        return str(path)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    store, client = tmp_path / "store", tmp_path / "client"
    client.mkdir()
    sock = tmp_path / "run" / "noether.sock"
    proc = start_daemon(store, sock)
    yield Setup(sock, store, client, tmp_path)
    stop(proc)


def test_stage_commands(setup: Setup, tmp_path: Path) -> None:
    other = tmp_path / "other"  # an embedded store driven through the same steps
    add1, v2, neg = setup.spec("add1", ADD1), setup.spec("v2", ADD1_V2), setup.spec("neg", NEG)
    x = setup.same("stage", "add", "--no-build", add1, home=other)["data"]
    assert x["lifecycle"] == "active"
    y = setup.same("stage", "add", "--no-build", "--draft", v2, home=other)["data"]
    assert y["lifecycle"] == "draft"
    z = setup.same("stage", "add", "--no-build", neg, home=other)["data"]
    assert setup.same("stage", "add", "--no-build", add1, home=other)["data"]["note"] == "already exists"

    assert setup.same("stage", "get", "add1")["data"]["id"] == x["id"]
    assert setup.same("stage", "get", y["id"][:12])["data"]["name"] == "add1"
    assert setup.same("stage", "get", "no_such_stage", rc=1)["error"]["code"] == "stage_not_found"
    assert setup.same("stage", "list", "--tag", TAG)["data"]["count"] == 2
    assert setup.same("stage", "list", "--lifecycle", "all", "--full-ids", "--tag", TAG)["data"]["count"] == 3
    assert setup.same("stage", "verify", "add1")["data"]["passed"] == 1
    assert setup.same("stage", "verify")["data"]["failed"] == 0

    activated = setup.same("stage", "activate", y["id"], home=other)["data"]
    assert activated == {"id": y["id"], "lifecycle": "active", "supersedes": [x["id"]]}
    deprecated = setup.same("stage", "deprecate", z["id"], "--successor", y["id"], home=other)["data"]
    assert deprecated["successor_id"] == y["id"]
    assert setup.same("stage", "tombstone", y["id"], home=other)["data"]["lifecycle"] == "tombstone"
    err = setup.same("stage", "activate", x["id"], rc=1, home=other)["error"]
    assert err["code"] == "invalid_transition"
    listed = setup.same("stage", "list", "--lifecycle", "all", "--tag", TAG)["data"]["stages"]
    assert sorted(s["lifecycle"] for s in listed) == ["Deprecated", "Deprecated", "Tombstone"]


def test_human_output(setup: Setup) -> None:
    assert setup.via("stage", "add", "--no-build", setup.spec("add1", ADD1)).returncode == 0
    text = setup.same("--human", "stage", "list", "--tag", TAG)
    assert "add1" in text and "1 stage\n" in text
    assert "total" in setup.same("store", "stats", "--human")
    assert "error[stage_not_found]: no stage matches 'nope'" in setup.same("stage", "get", "nope", "--human", rc=1)
    # A typo is answered with the name it most likely meant.
    assert "did you mean `add1`?" in setup.same("stage", "get", "ad1", "--human", rc=1)


def test_check_and_dry_run(setup: Setup, tmp_path: Path) -> None:
    hello = str(EXAMPLES / "hello.json")
    report = setup.same("check", hello)["data"]
    assert report["type_check"]["output"] == "Text"
    setup.same("check", hello, "--input", '"hi"')
    setup.same("run", "--dry-run", hello, "--no-optimize")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"description": "d", "version": "1", "root": {"op": "Sequential", "stages": [
        {"op": "Stage", "id": "text_length"}, {"op": "Stage", "id": "text_upper"}]}}))
    assert setup.same("check", str(bad), rc=2)["error"]["code"] == "type_mismatch"
    assert setup.same("check", str(tmp_path / "missing.json"), rc=1)["error"]["code"] == "file_not_found"
    # A graph that lists its own spec files: they are read by the CLI and added through the daemon.
    setup.spec("add1", ADD1)
    listed = tmp_path / "listed.json"
    listed.write_text(json.dumps({"description": "d", "version": "1", "stages": ["add1.json"],
                                  "root": {"op": "Stage", "id": "add1"}}))
    assert setup.same("check", str(listed), home=tmp_path / "other")["data"]["type_check"]["output"] == "Number"


def test_run_runs_and_trace(setup: Setup, tmp_path: Path) -> None:
    run = json.loads(setup.via("run", "--json", str(EXAMPLES / "hello.json")).stdout)["data"]
    assert run["output"] == "HELLO, WORLD!"
    runs = setup.same("runs", "--limit", "5")["data"]["runs"]
    assert [r["run_id"] for r in runs] == [run["run_id"]]
    assert setup.same("trace", run["run_id"])["data"]["trace"]["run_id"] == run["run_id"]
    assert setup.same("trace", run["composition_id"])["data"]["run_id"] == run["run_id"]
    assert setup.same("trace", "nope", rc=1)["error"]["code"] == "trace_not_found"
    # A graph the daemon refuses: the same error as embedded, and the daemon keeps serving.
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"description": "d", "version": "1", "root": {"op": "Nope"}}))
    assert setup.same("run", "--json", str(bad), rc=1)["error"]["code"] == "invalid_graph"
    assert Client(str(setup.sock)).request("GET", "/v1/health")[0] == 200


def test_warmup(setup: Setup) -> None:
    assert setup.via("stage", "add", "--no-build", setup.spec("add1", ADD1)).returncode == 0
    first = json.loads(setup.via("warmup", "add1").stdout)["data"]
    assert first["total"] == 1 and first["built"] + first["cached"] == 1, first
    # Built once: both modes now find it cached, with the same report.
    again = setup.same("warmup", "add1")["data"]
    assert again["cached"] == 1 and again["failed"] == []
    assert setup.same("warmup", "no_such_stage", rc=1)["error"]["code"] == "stage_not_found"


def test_store_commands(setup: Setup, tmp_path: Path) -> None:
    stats = setup.same("store", "stats")["data"]
    assert stats["total"] == stats["by_lifecycle"]["Active"]
    exported = setup.same("store", "export")["data"]
    assert len(exported["stages"]) == stats["total"]
    out = tmp_path / "store.json"
    assert setup.via("store", "export", "-o", str(out)).returncode == 0
    via_file = out.read_text()
    assert setup.same("store", "export", "-o", str(out))["data"] == {"path": str(out), "count": stats["total"]}
    assert out.read_text() == via_file

    # A stage only another store has, imported into the daemon's store and into a fresh embedded one.
    donor = tmp_path / "donor"
    added = json.loads(cli(donor, "--local", "stage", "add", "--no-build", setup.spec("neg", NEG)).stdout)
    stage = json.loads(cli(donor, "--local", "stage", "get", added["data"]["id"]).stdout)["data"]
    doc = tmp_path / "import.json"
    doc.write_text(json.dumps({"stages": [stage]}))
    imported = setup.same("store", "import", str(doc), home=tmp_path / "fresh")["data"]
    assert imported["imported"] == [stage["id"]]
    assert setup.same("store", "import", str(doc))["data"]["skipped"] == [stage["id"]]

    doc.write_text(json.dumps({"stages": [{**stage, "id": "0" * 64}]}))
    err = setup.same("store", "import", str(doc), rc=1)["error"]
    assert err["code"] == "import_failed" and err["details"]["failed"][0]["where"].startswith(str(doc))
    doc.write_text("[]")
    assert setup.same("store", "import", str(doc), rc=1)["error"]["code"] == "invalid_store_file"


def test_socket_selection_and_fallback(setup: Setup, tmp_path: Path) -> None:
    assert setup.via("stage", "add", "--no-build", setup.spec("add1", ADD1)).returncode == 0
    want = normalise(setup.local("stage", "get", "add1").stdout)
    before = _requests(setup.sock)
    # $NOETHER_SOCKET and the default socket ($XDG_RUNTIME_DIR/noether.sock) select the live daemon.
    for env in ({"NOETHER_SOCKET": str(setup.sock)}, {"XDG_RUNTIME_DIR": str(setup.sock.parent)}):
        got = cli(setup.client, "stage", "get", "add1", env=env)
        assert got.returncode == 0 and normalise(got.stdout) == want, got.stderr
    assert _requests(setup.sock) > before
    assert not (setup.client / "noether.db").exists()
    # --local wins over a live socket; a dead $NOETHER_SOCKET falls back to embedded.
    for home, args, env in ((tmp_path / "h1", ["--local"], {"NOETHER_SOCKET": str(setup.sock)}),
                            (tmp_path / "h2", [], {"NOETHER_SOCKET": str(tmp_path / "dead.sock")})):
        got = cli(home, *args, "stage", "get", "add1", env=env)
        assert got.returncode == 1 and json.loads(got.stdout)["error"]["code"] == "stage_not_found"
        assert (home / "noether.db").exists()
    # An explicit --socket that nobody serves is an error, not a silent fallback.
    for args in (["stage", "list"], ["run", "--json", str(EXAMPLES / "hello.json")]):
        got = cli(tmp_path / "h3", "--socket", str(tmp_path / "dead.sock"), *args)
        assert got.returncode == 1 and json.loads(got.stdout)["error"]["code"] == "daemon_unreachable"


def _requests(sock: Path) -> int:
    metrics = Client(str(sock)).request("GET", "/metrics")[1]
    return int(re.search(r"noether_requests_total (\d+)", metrics).group(1))  # type: ignore[union-attr]


def test_a_forbidden_write_is_the_same_error_envelope(tmp_path: Path) -> None:
    store, client = tmp_path / "store", tmp_path / "client"
    sock = tmp_path / "noether.sock"
    proc = start_daemon(store, sock, {"write_uids": []})  # may read and run, not change the store
    try:
        spec = tmp_path / "add1.json"
        spec.write_text(json.dumps(ADD1))
        doc = tmp_path / "import.json"
        doc.write_text(json.dumps({"stages": []}))
        for command, args in (("stage add", ["stage", "add", str(spec)]),
                              ("stage tombstone", ["stage", "tombstone", "text_upper"]),
                              ("store import", ["store", "import", str(doc)]),
                              ("warmup", ["warmup", "text_upper"])):
            got = cli(client, "--socket", str(sock), *args)
            assert got.returncode == 1 and got.stderr == ""
            env = json.loads(got.stdout)
            assert env["ok"] is False and env["command"] == command
            assert env["error"]["code"] == "forbidden" and "exit_code" not in env["error"]
        assert cli(client, "--socket", str(sock), "store", "stats").returncode == 0
    finally:
        stop(proc)


def test_stage_test_and_the_io_stages(setup: Setup, shared_tmp: Path) -> None:
    tmp_path = shared_tmp  # root's sandboxes run as noether-sbx users: grant what they can reach
    data = setup.same("stage", "test", "text_upper")["data"]
    assert (data["total"], data["passed"]) == (1, 1)
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "in.txt").write_text("read through the daemon")
    read = tmp_path / "read.graph.json"
    read.write_text(json.dumps({"description": "r", "version": "1", "root": {"op": "Stage", "id": "read_file"}}))
    path = json.dumps({"path": str(tmp_path / "files" / "in.txt")})
    for mode in (setup.via, setup.local):  # runs differ in their ids and timings: compare what matters
        done = mode("run", "--json", str(read), "--input", path, "--allow-read", str(tmp_path / "files"))
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["data"]["output"]["content"] == "read through the daemon"
        done = mode("run", "--json", str(read), "--input", path)
        assert done.returncode == 3
        assert json.loads(done.stdout)["error"]["code"] == "path_not_granted"
    write = tmp_path / "say.graph.json"
    write.write_text(json.dumps({"description": "s", "version": "1", "root": {"op": "Stage", "id": "stdout_write"}}))
    via = setup.via("run", "--json", str(write), "--input", '{"text": "said"}')
    assert via.returncode == 0 and via.stderr == "said"


def test_only_trusted_peers_may_grant_file_access(tmp_path: Path) -> None:
    store, client = tmp_path / "store", tmp_path / "client"
    client.mkdir()
    sock = tmp_path / "noether.sock"
    proc = start_daemon(store, sock, {"write_uids": []})
    try:
        read = tmp_path / "read.graph.json"
        read.write_text(json.dumps({"description": "r", "version": "1", "root": {"op": "Stage", "id": "read_file"}}))
        done = cli(client, "--socket", str(sock), "run", "--json", str(read), "--input",
                   json.dumps({"path": "/etc/hostname"}), "--allow-read", "/etc")
        assert done.returncode != 0
        assert json.loads(done.stdout)["error"]["code"] == "forbidden"
        # Nor may such a peer run unsigned stages, or add stages from inside a graph.
        add = tmp_path / "add.graph.json"
        add.write_text(json.dumps({"description": "a", "version": "1", "root": {"op": "Stage", "id": "store_add"}}))
        done = cli(client, "--socket", str(sock), "run", "--json", str(add), "--input", "{}", "--allow-unsigned")
        err = json.loads(done.stdout)["error"]
        assert err["code"] == "forbidden" and "unsigned" in err["message"]
        spec = {"name": "sneaky", "input": "Any", "output": "Any", "implementation": "def execute(x):\n    return x\n"}
        done = cli(client, "--socket", str(sock), "run", "--json", str(add), "--input", json.dumps({"spec": spec}))
        err = json.loads(done.stdout)["error"]
        assert err["code"] == "forbidden" and "may not add stages" in err["message"]
        # `stage test` runs any stored stage (unsigned ones too); a check would
        # tell whether a path exists: both need the same trust.
        done = cli(client, "--socket", str(sock), "stage", "test", "text_upper")
        assert json.loads(done.stdout)["error"]["code"] == "forbidden"
        done = cli(client, "--socket", str(sock), "check", str(read), "--allow-unsigned")
        assert json.loads(done.stdout)["error"]["code"] == "forbidden"
    finally:
        stop(proc)


def test_the_daemon_refuses_unsandboxed_runs_unless_configured(setup: Setup) -> None:
    done = setup.via("run", "--json", str(EXAMPLES / "hello.json"), "--isolate", "none")
    assert done.returncode != 0
    err = json.loads(done.stdout)["error"]
    assert err["code"] == "forbidden" and "allow_unsandboxed_runs" in err["message"]


def test_a_body_over_the_daemons_cap_is_its_error_not_a_lost_daemon(tmp_path: Path) -> None:
    store, client = tmp_path / "store", tmp_path / "client"
    client.mkdir()
    sock = tmp_path / "noether.sock"
    proc = start_daemon(store, sock, {"max_body_bytes": 64 * 1024})
    try:
        big = tmp_path / "big.json"
        big.write_text(json.dumps({"stages": [], "padding": "x" * 5_000_000}))
        done = cli(client, "--socket", str(sock), "store", "import", str(big))
        err = json.loads(done.stdout)["error"]
        assert err["code"] != "daemon_unreachable", err
        assert "too large" in err["message"] or err["code"] == "body_too_large", err
    finally:
        stop(proc)


def test_an_empty_reference_is_refused_the_same_way_in_both_modes(setup: Setup) -> None:
    for args in (("stage", "get", ""), ("trace", ""), ("stage", "test", "")):
        assert setup.same(*args, rc=2)["error"]["code"] == "usage"
