"""The daemon for real: a subprocess on a temporary socket, driven by the
client, by curl, through systemd-socket-activate, and by hostile clients."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from noether_nix.client import Client
from tests.processes import running, sandbox_pids

HELLO = {"description": "d", "version": "1", "root": {"op": "Stage", "id": "text_upper"}}


def wait_for_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        if path.exists():
            # Serving (not merely bound): the daemon answers its health endpoint.
            try:
                if Client(str(path), timeout=5).request("GET", "/v1/health")[0] == 200:
                    return
            except OSError:
                pass
        time.sleep(0.05)
    raise AssertionError("daemon did not come up")


def start(tmp_path: Path, config: dict[str, Any] | None = None,
          sock_dir: Path | None = None) -> tuple[subprocess.Popen[bytes], Path]:
    sock = (sock_dir or tmp_path) / "noether.sock"
    args = [sys.executable, "-m", "noether_nix.cli.main", "daemon", "--socket", str(sock)]
    if config:
        cfg = tmp_path / "daemon.json"
        cfg.write_text(json.dumps(config))
        args += ["--config", str(cfg)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_socket(sock, proc)
    return proc, sock


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    proc, sock = start(tmp_path)
    yield proc, sock
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_client_health_and_run(daemon: tuple[subprocess.Popen[bytes], Path]) -> None:
    _, sock = daemon
    c = Client(str(sock))
    status, health = c.request("GET", "/v1/health")
    assert status == 200 and health["ok"] and health["data"]["store"]["Active"] == 85
    assert health["data"]["warmup"]["state"] in ("pending", "running", "done")
    events = list(c.run(HELLO, "hi"))
    assert [e["event"] for e in events] == ["run_accepted", "stage_started", "stage_finished", "run_finished"]
    assert events[-1]["output"] == "HI"
    status, run = c.request("GET", f"/v1/runs/{events[-1]['run_id']}")
    assert status == 200 and run["data"]["status"] == "ok"
    status, trace = c.request("GET", f"/v1/traces/{events[-1]['composition_id']}")
    assert status == 200 and trace["data"]["stages"][0]["name"] == "text_upper"


def test_curl_works(daemon: tuple[subprocess.Popen[bytes], Path]) -> None:
    _, sock = daemon
    out = subprocess.run(["curl", "-s", "--unix-socket", str(sock), "http://localhost/v1/stages/text_upper"],
                         capture_output=True, text=True, timeout=30)
    assert json.loads(out.stdout)["data"]["name"] == "text_upper"
    out = subprocess.run(["curl", "-s", "-N", "--unix-socket", str(sock), "-X", "POST", "http://localhost/v1/runs",
                          "-d", json.dumps({"graph": HELLO, "input": "curl"})], capture_output=True, text=True,
                         timeout=60)
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert lines[-1]["output"] == "CURL"


def test_errors_have_codes_and_http_status(daemon: tuple[subprocess.Popen[bytes], Path]) -> None:
    _, sock = daemon
    c = Client(str(sock))
    status, body = c.request("GET", "/v1/stages/no_such_stage")
    assert status == 404 and body["error"]["code"] == "stage_not_found"
    status, body = c.request("POST", "/v1/check", {"graph": {"description": "d", "version": "1",
                                                             "root": {"op": "Nope"}}})
    assert status == 400 and body["error"]["code"] == "invalid_graph"
    status, body = c.request("GET", "/v1/nothing")
    assert status == 404 and body["error"]["code"] == "not_found"


def raw_exchange(sock: Path, data: bytes, timeout: float = 15) -> bytes:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(str(sock))
    try:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)
    except (ConnectionResetError, BrokenPipeError):
        return b""
    finally:
        s.close()


def test_hostile_requests_are_rejected_without_harm(daemon: tuple[subprocess.Popen[bytes], Path]) -> None:
    _, sock = daemon
    bad_json = b"POST /v1/runs HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{nope"
    assert b" 400 " in raw_exchange(sock, bad_json).split(b"\r\n")[0]
    huge = b"POST /v1/runs HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n"
    assert b" 413 " in raw_exchange(sock, huge).split(b"\r\n")[0]
    garbage = b"\x00\x01 not http at all\r\n\r\n"
    assert b" 400 " in raw_exchange(sock, garbage).split(b"\r\n")[0]
    # The daemon still serves everyone else.
    assert list(Client(str(sock)).run(HELLO, "ok"))[-1]["output"] == "OK"


def test_other_uids_get_403(tmp_path: Path) -> None:
    import tempfile

    open_dir = Path(tempfile.mkdtemp(prefix="noether-sock-", dir="/tmp"))
    open_dir.chmod(0o755)
    proc, sock = start(tmp_path, {"socket_mode": 0o666}, sock_dir=open_dir)
    try:
        code = ("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
                "s.sendall(b'GET /v1/health HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'); print(s.recv(200).decode())")
        out = subprocess.run(["/usr/bin/python3", "-c", code, str(sock)], capture_output=True, text=True,
                             user=65534, timeout=30)
        assert " 403 " in out.stdout.splitlines()[0], out.stderr
    finally:
        proc.terminate()
        proc.wait(15)


def test_sigterm_stops_and_removes_the_socket(tmp_path: Path) -> None:
    proc, sock = start(tmp_path)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert not sock.exists()


def test_second_daemon_on_a_live_socket_is_refused(daemon: tuple[subprocess.Popen[bytes], Path]) -> None:
    _, sock = daemon
    out = subprocess.run([sys.executable, "-m", "noether_nix.cli.main", "daemon", "--socket", str(sock)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert json.loads(out.stdout)["error"]["code"] == "daemon_running"


def test_socket_activation_and_readiness(tmp_path: Path) -> None:
    sock = tmp_path / "activated.sock"
    notify = tmp_path / "notify.sock"
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(str(notify))
    ns.settimeout(30)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify)}
    passed = [a for var in ("NOTIFY_SOCKET", "NOETHER_HOME", "PATH", "HOME") for a in ("-E", var)]
    proc = subprocess.Popen(["systemd-socket-activate", *passed, "-l", str(sock), sys.executable, "-m",
                             "noether_nix.cli.main", "daemon"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        # The first connection activates the daemon, which then reports READY=1.
        c = Client(str(sock))
        status, _ = c.request("GET", "/v1/health")
        assert status == 200
        msg = ns.recv(4096).decode()
        assert "READY=1" in msg
    finally:
        proc.terminate()
        proc.wait(15)
        ns.close()


def test_client_disconnect_cancels_the_run_and_kills_its_sandbox(daemon: tuple[subprocess.Popen[bytes], Path],
                                                                  tmp_path: Path) -> None:
    proc, sock = daemon
    spec = {"name": "forever", "input": "Any", "output": "Any", "effects": ["NonDeterministic"],
            "implementation": "import time\ndef execute(x):\n    while True:\n        time.sleep(0.05)\n"}
    c = Client(str(sock))
    status, _ = c.request("POST", "/v1/stages", {"spec": spec})
    assert status == 200
    graph = {"description": "d", "version": "1", "root": {"op": "Stage", "id": "forever"}}
    events = c.run(graph, None)
    for ev in events:
        if ev["event"] == "stage_started":
            break
    _wait_for_sandbox(proc.pid)
    events.close()  # the client goes away mid-run
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not _stage_processes(proc.pid):
            break
        time.sleep(0.1)
    assert _stage_processes(proc.pid) == []


def _stage_processes(daemon_pid: int) -> list[int]:
    """The daemon's sandbox processes still running, found by the cgroups it made."""
    return [pid for pid in sandbox_pids(daemon_pid) if running(pid)]


def _wait_for_sandbox(daemon_pid: int) -> None:
    deadline = time.monotonic() + 30  # the stage's program may still be building
    while not _stage_processes(daemon_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _stage_processes(daemon_pid), "the stage's sandbox is not in a cgroup of the daemon's"


def test_kill_9_leaves_no_sandbox_and_restart_keeps_the_store(tmp_path: Path) -> None:
    proc, sock = start(tmp_path)
    c = Client(str(sock))
    spec = {"name": "sleeper", "input": "Any", "output": "Any", "effects": ["NonDeterministic"],
            "implementation": "import time\ndef execute(x):\n    time.sleep(60)\n"}
    status, added = c.request("POST", "/v1/stages", {"spec": spec})
    assert status == 200
    events = c.run({"description": "d", "version": "1", "root": {"op": "Stage", "id": "sleeper"}}, None)
    for ev in events:
        if ev["event"] == "stage_started":
            break
    _wait_for_sandbox(proc.pid)
    dead = proc.pid
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 5
    while _stage_processes(dead) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _stage_processes(dead) == []
    proc2, sock2 = start(tmp_path)
    try:
        status, got = Client(str(sock2)).request("GET", f"/v1/stages/{added['data']['id']}")
        assert status == 200 and got["data"]["name"] == "sleeper"
        status, runs = Client(str(sock2)).request("GET", "/v1/runs")
        assert runs["data"]["runs"][0]["status"] == "interrupted"
    finally:
        proc2.terminate()
        proc2.wait(15)


def test_cli_run_talks_to_a_live_daemon_with_the_same_output(daemon: tuple[subprocess.Popen[bytes], Path]) -> None:
    _, sock = daemon
    examples = Path(__file__).resolve().parents[2] / "examples"
    via = subprocess.run([sys.executable, "-m", "noether_nix.cli.main", "run", "--socket", str(sock), "--json",
                          str(examples / "hello.json")], capture_output=True, text=True, timeout=120)
    local = subprocess.run([sys.executable, "-m", "noether_nix.cli.main", "run", "--local", "--json",
                            str(examples / "hello.json")], capture_output=True, text=True, timeout=120)
    a, b = json.loads(via.stdout)["data"], json.loads(local.stdout)["data"]
    assert a["output"] == b["output"] == "HELLO, WORLD!"
    assert a["composition_id"] == b["composition_id"]
    status, runs = Client(str(sock)).request("GET", "/v1/runs")
    assert a["run_id"] in [r["run_id"] for r in runs["data"]["runs"]]


async def test_an_async_program_uses_the_client_from_a_thread(daemon: tuple[subprocess.Popen[bytes], Path]) -> None:
    import trio

    _, sock = daemon
    c = Client(str(sock))
    status, health = await trio.to_thread.run_sync(c.request, "GET", "/v1/health")
    assert status == 200 and health["data"]["status"] == "ok"
    events = await trio.to_thread.run_sync(lambda: list(c.run(HELLO, "trio")))
    assert events[0]["event"] == "run_accepted" and events[-1]["output"] == "TRIO"


@pytest.mark.parametrize("flag", ["detach", "detached"])
def test_a_detached_run_outlives_its_client(daemon: tuple[subprocess.Popen[bytes], Path], flag: str) -> None:
    _, sock = daemon
    c = Client(str(sock))
    spec = {"name": "slow_echo", "input": "Any", "output": "Any", "effects": ["NonDeterministic"],
            "implementation": "import time\ndef execute(x):\n    time.sleep(1)\n    return x\n"}
    assert c.request("POST", "/v1/stages", {"spec": spec})[0] == 200
    graph = {"description": "d", "version": "1", "root": {"op": "Stage", "id": "slow_echo"}}
    events = c.run(graph, "still here", {flag: True})
    run_id = next(events)["run_id"]  # run_accepted
    events.close()  # the client goes away at once
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status, run = c.request("GET", f"/v1/runs/{run_id}")
        if status == 200 and run["data"]["status"] != "running":
            break
        time.sleep(0.2)
    assert run["data"]["status"] == "ok", run
    assert run["data"]["events"][-1]["output"] == "still here"


def test_watchdog_pings_at_half_the_interval(tmp_path: Path) -> None:
    notify = tmp_path / "notify.sock"
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(str(notify))
    ns.settimeout(10)
    sock = tmp_path / "noether.sock"
    env = {**os.environ, "NOTIFY_SOCKET": str(notify), "WATCHDOG_USEC": "400000"}  # ping every 0.2 s
    proc = subprocess.Popen([sys.executable, "-m", "noether_nix.cli.main", "daemon", "--socket", str(sock)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_socket(sock, proc)
        messages = [ns.recv(4096).decode() for _ in range(6)]
        started = time.monotonic()
        while sum("WATCHDOG=1" in m for m in messages) < 8:
            messages.append(ns.recv(4096).decode())
        # Eight pings, the last six within about 1.2 s: the loop pings at half WATCHDOG_USEC.
        assert any("READY=1" in m for m in messages)
        assert time.monotonic() - started < 5
    finally:
        proc.terminate()
        proc.wait(15)
        ns.close()


def test_no_watchdog_pings_without_watchdog_usec(tmp_path: Path) -> None:
    notify = tmp_path / "notify.sock"
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(str(notify))
    sock = tmp_path / "noether.sock"
    env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_USEC", "WATCHDOG_PID")}
    proc = subprocess.Popen([sys.executable, "-m", "noether_nix.cli.main", "daemon", "--socket", str(sock)],
                            env={**env, "NOTIFY_SOCKET": str(notify)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        wait_for_socket(sock, proc)
        time.sleep(0.5)
        ns.settimeout(0.5)
        messages = []
        with contextlib.suppress(TimeoutError):
            while True:
                messages.append(ns.recv(4096).decode())
        assert any("READY=1" in m for m in messages)
        assert not any("WATCHDOG=1" in m for m in messages)
    finally:
        proc.terminate()
        proc.wait(15)
        ns.close()


def test_a_run_the_daemon_refuses_leaves_it_serving(daemon: tuple[subprocess.Popen[bytes], Path]) -> None:
    _, sock = daemon
    c = Client(str(sock))
    status, body = c.request("POST", "/v1/runs", {"graph": {"description": "d", "version": "1",
                                                            "root": {"op": "Nope"}}})
    assert status == 400 and body["error"]["code"] == "invalid_graph" and body["error"]["exit_code"] == 1
    status, body = c.request("POST", "/v1/stages", [1, 2])
    assert status == 400 and body["error"]["code"] == "usage"
    assert list(c.run(HELLO, "ok"))[-1]["output"] == "OK"


def test_a_root_daemon_runs_a_peers_sandboxes_as_that_peer(tmp_path: Path) -> None:
    # What a stage writes through its FsWrite effect belongs to the peer who
    # ran it, not to root: the sandbox runs as the peer on the host.
    import tempfile

    open_dir = Path(tempfile.mkdtemp(prefix="noether-sock-", dir="/tmp"))
    open_dir.chmod(0o755)
    out_dir = Path(tempfile.mkdtemp(prefix="noether-out-", dir="/tmp"))
    out_dir.chmod(0o777)
    proc, sock = start(tmp_path, {"socket_mode": 0o666, "allowed_uids": [0, 65534], "write_uids": [0]},
                       sock_dir=open_dir)
    try:
        spec = {"name": "leave_a_file", "input": "Text", "output": "Text",
                "effects": [{"effect": "FsWrite", "path": str(out_dir)}],
                "implementation": {"language": "python", "code":
                                   f"def execute(name):\n    open({str(out_dir)!r} + '/' + name, 'w').write('x')\n"
                                   "    return name\n"}}
        added = Client(str(sock), timeout=120).call("POST", "/v1/stages", {"spec": spec, "build": True})
        graph = {"description": "t", "version": "1", "root": {"op": "Stage", "id": added["id"]}}
        code = ("import json,socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
                "b=json.dumps({'graph': json.loads(sys.argv[2]), 'input': 'by-peer'}).encode(); "
                "s.sendall(b'POST /v1/runs HTTP/1.1\\r\\nHost: x\\r\\nContent-Type: application/json\\r\\n"
                "Content-Length: ' + str(len(b)).encode() + b'\\r\\nConnection: close\\r\\n\\r\\n' + b); "
                "out=b''\nwhile True:\n    c=s.recv(65536)\n    if not c: break\n    out+=c\nprint(out.decode())")
        run = subprocess.run(["/usr/bin/python3", "-c", code, str(sock), json.dumps(graph)], capture_output=True,
                             text=True, user=65534, timeout=120)
        assert '"output":"by-peer"' in run.stdout.replace(" ", ""), (run.stdout, run.stderr)
        assert (out_dir / "by-peer").stat().st_uid == 65534
        # Root's own run is never host root: it writes as a dedicated sandbox user.
        import grp

        assert list(Client(str(sock), timeout=60).run(graph, "by-root"))[-1]["output"] == "by-root"
        by_root = (out_dir / "by-root").stat()
        assert 80000 <= by_root.st_uid < 80064 and by_root.st_gid == grp.getgrnam("noether-sbx").gr_gid
        # The peer sees its own run only; root (a writer) sees both.
        get = ("import json,socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
               "s.sendall(b'GET /v1/runs HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n'); "
               "out=b''\nwhile True:\n    c=s.recv(65536)\n    if not c: break\n    out+=c\n"
               "print(json.dumps(json.loads(out.split(b'\\r\\n\\r\\n', 1)[1])))")
        mine = subprocess.run(["/usr/bin/python3", "-c", get, str(sock)], capture_output=True, text=True,
                              user=65534, timeout=60)
        assert len(json.loads(mine.stdout)["data"]["runs"]) == 1, (mine.stdout, mine.stderr)
        assert len(Client(str(sock)).call("GET", "/v1/runs")["runs"]) == 2
        # kv values are the peer's own: root's secret is not in the peer's namespace.
        kv_set = {"description": "s", "version": "1", "root": {"op": "Stage", "id": "kv_set"}}
        kv_get = {"description": "g", "version": "1", "root": {"op": "Stage", "id": "kv_get"}}
        secret = {"key": "secret", "value": "root-only", "namespace": None}
        assert list(Client(str(sock)).run(kv_set, secret))[-1]["status"] == "ok"
        peek = subprocess.run(["/usr/bin/python3", "-c", code.replace("'input': 'by-peer'", "'input': json.loads(sys.argv[3])"),
                               str(sock), json.dumps(kv_get), json.dumps({"key": "secret", "namespace": None})],
                              capture_output=True, text=True, user=65534, timeout=60)
        assert '"status":"ok"' in peek.stdout.replace(" ", "") and '"output":null' in peek.stdout.replace(" ", ""), \
            peek.stdout
    finally:
        proc.terminate()
        proc.wait(15)


def test_a_starting_daemon_removes_cgroups_a_killed_one_left(tmp_path: Path) -> None:
    # A SIGKILLed daemon cannot remove its runs' cgroups; the next one does
    # (only empty ones: a live process's run is never touched).
    # An empty one whose creator still runs is a run about to start: kept.
    from noether_nix.sandbox.cgroups import RunCgroup

    made = subprocess.run([sys.executable, "-c", "import json; from noether_nix.sandbox.cgroups import RunCgroup; "
                           "c = RunCgroup.create(64 * 1024 * 1024, 16); "
                           "print(json.dumps(None if c is None else [str(d) for d in c.dirs.values()]))"],
                          capture_output=True, text=True, timeout=60, check=True)
    stale = [Path(d) for d in json.loads(made.stdout) or []]
    if not stale:
        pytest.skip("no writable cgroup hierarchy here")
    starting = RunCgroup.create(64 * 1024 * 1024, 16)
    assert starting is not None
    assert all(d.is_dir() for d in stale)
    try:
        proc, _sock = start(tmp_path)
        try:
            assert not any(d.exists() for d in stale)
            assert all(d.is_dir() for d in starting.dirs.values())
        finally:
            proc.terminate()
            proc.wait(15)
    finally:
        starting.remove()
        for d in stale:
            with contextlib.suppress(OSError):
                d.rmdir()


def test_a_run_cancelled_by_delete_ends_its_stream_with_a_cancelled_result(
        daemon: tuple[subprocess.Popen[bytes], Path]) -> None:
    _proc, sock = daemon
    c = Client(str(sock))
    spec = {"name": "napper", "input": "Any", "output": "Any", "effects": ["NonDeterministic"],
            "implementation": "import time\ndef execute(x):\n    time.sleep(60)\n"}
    assert c.request("POST", "/v1/stages", {"spec": spec})[0] == 200
    events = c.run({"description": "d", "version": "1", "root": {"op": "Stage", "id": "napper"}}, None)
    run_id = None
    for ev in events:
        if ev["event"] == "run_accepted":
            run_id = ev["run_id"]
        if ev["event"] == "stage_started":
            break
    assert run_id is not None
    assert Client(str(sock)).call("DELETE", f"/v1/runs/{run_id}") == {"run_id": run_id, "cancelled": True}
    last = list(events)[-1]
    assert last["event"] == "run_finished" and last["status"] == "cancelled"
    assert last["error"]["code"] == "cancelled"


def test_a_disallowed_peer_holds_no_slot_for_the_header_timeout(tmp_path: Path) -> None:
    # It sends a request line and then nothing: refused within about a second,
    # not after the 10 s header timeout allowed peers get.
    import tempfile

    open_dir = Path(tempfile.mkdtemp(prefix="noether-sock-", dir="/tmp"))
    open_dir.chmod(0o755)
    proc, sock = start(tmp_path, {"socket_mode": 0o666}, sock_dir=open_dir)
    try:
        code = ("import socket,sys,time; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); t=time.monotonic(); "
                "s.sendall(b'GET /v1/health HTTP/1.1\\r\\nHost: x\\r\\n'); out=s.recv(200); "
                "print(round(time.monotonic()-t, 1), out.decode()[:12])")
        out = subprocess.run(["/usr/bin/python3", "-c", code, str(sock)], capture_output=True, text=True,
                             user=65534, timeout=30)
        waited = float(out.stdout.split()[0])
        assert waited < 3, out.stdout
    finally:
        proc.terminate()
        proc.wait(15)


def test_a_detached_run_holds_no_connection_slot(tmp_path: Path) -> None:
    # One connection per peer: while a detached run goes on without its client,
    # that client's peer can still connect (the run is the daemon's, not the connection's).
    proc, sock = start(tmp_path, {"max_connections_per_peer": 1})
    try:
        c = Client(str(sock))
        spec = {"name": "slow_echo", "input": "Any", "output": "Any", "effects": ["NonDeterministic"],
                "implementation": "import time\ndef execute(x):\n    time.sleep(3)\n    return x\n"}
        assert c.request("POST", "/v1/stages", {"spec": spec, "build": True})[0] == 200
        graph = {"description": "d", "version": "1", "root": {"op": "Stage", "id": "slow_echo"}}
        events = c.run(graph, "later", {"detach": True})
        run_id = next(events)["run_id"]
        events.close()
        deadline = time.monotonic() + 5  # the daemon sees the client leave a moment later
        while (got := c.request("GET", "/v1/health"))[0] == 429 and time.monotonic() < deadline:
            time.sleep(0.05)
        status, health = got
        assert status == 200 and health["data"]["runs_in_flight"] == 1  # still running, and we got in
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            run = c.request("GET", f"/v1/runs/{run_id}")[1]["data"]
            if run["status"] != "running":
                break
            time.sleep(0.2)
        assert run["status"] == "ok" and run["events"][-1]["output"] == "later"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_envelopes_carry_the_measured_duration(daemon: tuple[subprocess.Popen[bytes], Path]) -> None:
    _, sock = daemon
    c = Client(str(sock))
    spec = {"name": "timed", "input": "Any", "output": "Any", "implementation": "def execute(x):\n    return x\n"}
    status, added = c.request("POST", "/v1/stages", {"spec": spec, "build": True})  # a Nix build: tens of ms
    assert status == 200 and added["meta"]["duration_ms"] >= added["data"]["program"]["build_ms"] > 0


def test_a_client_that_leaves_while_queued_gives_up_its_place(tmp_path: Path) -> None:
    proc, sock = start(tmp_path, {"max_runs": 1})
    try:
        c = Client(str(sock))
        spec = {"name": "slow_echo", "input": "Any", "output": "Any", "effects": ["NonDeterministic"],
                "implementation": "import time\ndef execute(x):\n    time.sleep(4)\n    return x\n"}
        assert c.request("POST", "/v1/stages", {"spec": spec, "build": True})[0] == 200
        graph = {"description": "d", "version": "1", "root": {"op": "Stage", "id": "slow_echo"}}
        first = c.run(graph, "first")
        assert next(first)["event"] == "run_accepted"  # holds the only slot
        body = json.dumps({"graph": graph, "input": "second"}).encode()
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(sock))
        s.sendall(b"POST /v1/runs HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        deadline = time.monotonic() + 10
        while c.request("GET", "/v1/health")[1]["data"]["runs_queued"] != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        s.close()  # gone while queued
        while c.request("GET", "/v1/health")[1]["data"]["runs_queued"] != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(first)[-1]["output"] == "first"
        time.sleep(0.5)
        health = c.request("GET", "/v1/health")[1]["data"]
        assert health["runs_queued"] == 0 and health["counters"]["runs_started"] == 1  # the second never ran
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
