"""A daemon keeps warm sandboxes between runs: its health shows them, peers
never share one, and stopping the daemon leaves none behind."""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from noether_nix.client import Client
from noether_nix.sandbox.cgroups import ROOT, _own_paths
from tests.server.test_daemon import start

STAGE = {"name": "who_runs", "input": "Text", "output": "Any",
         "implementation": {"language": "python", "code":
                            "import os\ndef execute(x):\n    return [x, os.getuid(), sorted(os.listdir('/tmp'))]\n"}}


def daemon_cgroups(pid: int) -> list[Path]:
    """The sandbox cgroups a daemon (by its pid) has under our cgroup(s)."""
    own = _own_paths()
    bases = {ROOT / ctl / path.lstrip("/") for ctl, path in own.items() if ctl in ("memory", "pids")}
    if "" in own and (ROOT / "cgroup.controllers").exists():
        bases.add(ROOT / own[""].lstrip("/"))
        bases.add((ROOT / own[""].lstrip("/")).parent)
    return [d for base in bases for d in base.glob(f"noether-{pid}-*")]


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def test_the_daemon_keeps_warm_sandboxes_and_its_health_shows_them(tmp_path: Path) -> None:
    proc, sock = start(tmp_path)
    try:
        c = Client(str(sock), timeout=120)
        added = c.call("POST", "/v1/stages", {"spec": STAGE, "build": True})
        graph = {"description": "t", "version": "1", "root": {"op": "Stage", "id": added["id"]}}
        outs = [list(c.run(graph, f"call {i}", {"cache": False}))[-1] for i in range(3)]
        assert [o["output"][0] for o in outs] == ["call 0", "call 1", "call 2"]
        assert all(o["output"][2] == [] for o in outs)  # each call its own empty /tmp
        warm = c.call("GET", "/v1/health")["warm_sandboxes"]
        assert len(warm["idle"]) == 1 and warm["idle"][0]["calls"] == 3, warm
        assert warm["counters"]["started"] == 1 and warm["counters"]["reused"] == 2, warm
        assert daemon_cgroups(proc.pid), "the warm sandbox has no cgroup of the daemon's"
    finally:
        stop(proc)
    assert daemon_cgroups(proc.pid) == [], "a warm sandbox outlived its daemon"


def test_peers_never_share_a_warm_sandbox(tmp_path: Path) -> None:
    import os

    if os.geteuid() != 0:
        pytest.skip("needs root to connect as another user")
    open_dir = Path(tempfile.mkdtemp(prefix="noether-sock-", dir="/tmp"))
    open_dir.chmod(0o755)
    proc, sock = start(tmp_path, {"socket_mode": 0o666, "allowed_uids": [0, 65534], "write_uids": [0]},
                       sock_dir=open_dir)
    try:
        c = Client(str(sock), timeout=120)
        added = c.call("POST", "/v1/stages", {"spec": STAGE, "build": True})
        graph = {"description": "t", "version": "1", "root": {"op": "Stage", "id": added["id"]}}
        by_root = list(c.run(graph, "root", {"cache": False}))[-1]["output"]
        code = ("import json,socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
                "b=json.dumps({'graph': json.loads(sys.argv[2]), 'input': 'peer', 'options': {'cache': False}})"
                ".encode(); s.sendall(b'POST /v1/runs HTTP/1.0\\r\\nContent-Type: application/json\\r\\n"
                "Content-Length: ' + str(len(b)).encode() + b'\\r\\n\\r\\n' + b); "
                "out=b''\nwhile True:\n    c=s.recv(65536)\n    if not c: break\n    out+=c\n"
                "print(out.split(b'\\r\\n\\r\\n', 1)[1].decode().strip().splitlines()[-1])")
        peer = subprocess.run(["/usr/bin/python3", "-c", code, str(sock), json.dumps(graph)], capture_output=True,
                              text=True, user=65534, timeout=120)
        by_peer: Any = json.loads(peer.stdout)["output"]
        assert by_peer[0] == "peer" and by_root[0] == "root"
        warm = c.call("GET", "/v1/health")["warm_sandboxes"]
        assert sorted(str(s["peer_uid"]) for s in warm["idle"]) == ["65534", "None"], warm
    finally:
        stop(proc)
