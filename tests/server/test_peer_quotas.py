"""One peer cannot starve the others (security finding 8).

The issue's scenario: a non-writer held all 16 run slots and 256
connections, and root waited 7-9 s. Here an unprivileged peer (uid 65534)
holds its runs and connections at the configured per-peer limits; what it
asks past them is refused with 429 and a code, and root's run goes through
at once.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.server.live import HELLO, SYSTEM_PYTHON, Live, open_socket_dir, start_live

pytestmark = pytest.mark.slow

LIMITS = {"max_runs_per_peer": 2, "max_queued_runs_per_peer": 2, "max_connections_per_peer": 6}

# Runs as uid 65534 with the system Python: opens RUNS run requests and IDLE idle
# connections, prints what each got within a few seconds, then holds them all
# until its stdin closes.
PEER = r"""
import json, socket, sys, time
path, graph, runs, idle = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
body = json.dumps({"graph": graph, "input": None}).encode()
conns = []
for i in range(runs):
    s = socket.socket(socket.AF_UNIX); s.connect(path)
    s.sendall(b"POST /v1/runs HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    conns.append(s)
    time.sleep(0.3)
for i in range(idle):
    s = socket.socket(socket.AF_UNIX); s.connect(path)
    if i == idle - 1:  # the one over the limit says what it wants, to be told why not
        s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
    conns.append(s)
    time.sleep(0.3)
seen = []
for s in conns:
    s.settimeout(3)
    try:
        seen.append(s.recv(65536).decode("utf-8", "replace"))
    except (socket.timeout, OSError):
        seen.append("")
print(json.dumps(seen), flush=True)
sys.stdin.read()
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    config = {"socket_mode": 0o666, "allowed_uids": [0, 65534], "write_uids": [0], "header_timeout_s": 60,
              **LIMITS}
    daemon = start_live(tmp_path_factory.mktemp("quotas"), config, sock_dir=open_socket_dir())
    try:
        yield daemon
    finally:
        daemon.stop()


def code_of(answer: str) -> tuple[int | None, str | None]:
    head, _, body = answer.partition("\r\n\r\n")
    parts = head.split(" ")
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    try:
        return status, json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return status, None


def test_a_peer_at_its_limits_gets_429s_and_root_runs_at_once(live: Live) -> None:
    spec = {"name": "napper", "input": "Any", "output": "Any", "effects": ["NonDeterministic"],
            "implementation": "import time\ndef execute(x):\n    time.sleep(120)\n"}
    live.client(timeout=300).call("POST", "/v1/stages", {"spec": spec, "build": True})
    graph = {"description": "nap", "version": "1", "root": {"op": "Stage", "id": "napper"}}
    # 5 runs: 2 run, 2 wait, 1 is refused; then idle connections up to 6, the 7th refused.
    peer = subprocess.Popen([SYSTEM_PYTHON, "-c", PEER, str(live.sock), json.dumps(graph), "5", "2"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            user=65534, group=65534, extra_groups=[])
    try:
        assert peer.stdout is not None
        seen = json.loads(peer.stdout.readline() or "null")
        assert seen is not None, peer.stderr.read() if peer.stderr else ""
        outcomes = [code_of(answer) for answer in seen]
        assert outcomes[:2] == [(200, None), (200, None)], seen[:2]  # streaming
        assert outcomes[2:4] == [(None, None), (None, None)], seen[2:4]  # queued: nothing yet
        assert outcomes[4] == (429, "too_many_runs"), seen[4]
        assert outcomes[5] == (None, None), seen[5]  # the 6th connection: held, idle
        assert outcomes[6] == (429, "too_many_connections"), seen[6]
        health = live.health()
        assert health["runs_in_flight"] == 2 and health["runs_queued"] == 2, health
        # Root (another peer) is neither queued behind them nor refused.
        started = time.monotonic()
        assert list(live.client().run(HELLO, "root first"))[-1]["output"] == "ROOT FIRST"
        assert time.monotonic() - started < 10
        for _ in range(3):  # and it may open connections while the peer holds its six
            assert live.client().request("GET", "/v1/health")[0] == 200
    finally:
        if peer.stdin is not None:
            peer.stdin.close()
        peer.wait(30)
    # The peer's runs end with its connections (they were not detached).
    # The queued ones never start: their client left while they waited.
    deadline = time.monotonic() + 30
    while (live.health()["runs_in_flight"] or live.health()["runs_queued"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    health = live.health()
    assert health["runs_in_flight"] == 0 and health["runs_queued"] == 0, health
    assert health["counters"]["runs_started"] == 3, health["counters"]  # the peer's two and root's one


def test_the_limits_are_settings_with_descriptions() -> None:
    import msgspec

    from noether_nix.settings import Settings

    info = {f.name: f for f in msgspec.inspect.type_info(Settings).fields}  # type: ignore[attr-defined]
    for name in (*LIMITS, "max_runs", "max_queued_runs", "max_connections"):
        field = info[name]
        assert isinstance(field.type, msgspec.inspect.Metadata), name
        said = (field.type.extra_json_schema or {}).get("description", "")
        assert len(said) > 20, (name, said)  # documented in the generated daemon.json
        if name in ("max_queued_runs_per_peer", "max_connections_per_peer"):
            assert "429" in said, said
