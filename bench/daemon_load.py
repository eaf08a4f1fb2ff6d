"""Load test of the daemon over its Unix socket (loopback only, bounded).

Usage: .venv/bin/python bench/daemon_load.py [CLIENTS] [STAGES]   (default 64 clients, 10 stages)

Starts a daemon on a temporary socket, registers one sandboxed Python stage,
then CLIENTS concurrent clients each run a graph of STAGES occurrences of it
(every stage a Nix-built program in bwrap), the graphs taking turns among a
Sequential, a Parallel, a Fanout and a ``map`` over the stage, while
malformed requests —
bad JSON, a huge declared body, half-sent headers, a wrong peer uid — are
interleaved. Checks every output, then that the daemon's RSS and open fds
return to their baseline. Exits non-zero on any wrong answer.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from noether_nix.client import Client

SPEC = {"name": "inc", "input": "Number", "output": "Number", "effects": ["Pure"],
        "implementation": "def execute(x):\n    return x + 1\n"}


def raw(sock: str, data: bytes, close_early: bool = False) -> bytes:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(sock)
    try:
        s.sendall(data)
        if close_early:
            return b""
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out
    except OSError:
        return b""
    finally:
        s.close()


def wrong_uid(sock: str) -> str:
    code = ("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
            "s.sendall(b'GET /v1/health HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'); print(s.recv(100).decode())")
    out = subprocess.run(["/usr/bin/python3", "-c", code, sock], capture_output=True, text=True, user=65534,
                         timeout=30)
    return out.stdout.splitlines()[0] if out.stdout else out.stderr


def main(argv: list[str]) -> int:
    clients = int(argv[0]) if argv else 64
    stages = int(argv[1]) if len(argv) > 1 else 10
    home = tempfile.mkdtemp(prefix="noether-load-")
    sock_dir = tempfile.mkdtemp(prefix="noether-load-sock-", dir="/tmp")
    os.chmod(sock_dir, 0o755)
    sock = os.path.join(sock_dir, "noether.sock")
    cfg = Path(home) / "daemon.json"
    # One peer (root) plays every client: its per-peer quotas are raised to the daemon's.
    cfg.write_text(json.dumps({"socket_mode": 0o666, "max_runs": 16, "max_queued_runs": 128,
                               "max_runs_per_peer": 16, "max_queued_runs_per_peer": 128,
                               "max_connections_per_peer": 256,
                               "engine": {"pure_cache": os.environ.get("BENCH_CACHE", "1") == "1",
                                          # Warm sandboxes (one per concurrent call of the program, up
                                          # to the cap) hold pipes and pidfds while idle: they expire
                                          # soon here, so "back to baseline" means every one gone.
                                          "warm_idle_secs": 2.0}}))
    env = {**os.environ, "NOETHER_HOME": home}
    log = open(os.path.join(home, "daemon.log"), "w")  # noqa: SIM115 - lives as long as the daemon
    proc = subprocess.Popen([sys.executable, "-m", "noether_nix.cli.main", "daemon", "--socket", sock,
                             "--config", str(cfg)], env=env, stderr=log)
    try:
        client = Client(sock)
        for _ in range(200):
            try:
                if client.request("GET", "/v1/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        assert client.request("POST", "/v1/stages", {"spec": SPEC})[0] == 200
        inc = {"op": "Stage", "id": "inc"}
        shapes = {
            "sequential": ({"op": "Sequential", "stages": [inc] * stages}, lambda x: x + stages),
            "parallel": ({"op": "Parallel", "branches": {f"b{j}": inc for j in range(stages)}},
                         lambda x: {f"b{j}": x + 1 for j in range(stages)}),
            "fanout": ({"op": "Fanout", "source": inc, "targets": [inc] * (stages - 1)},
                       lambda x: [x + 2] * (stages - 1)),
            "map": ({"op": "Stage", "id": "map", "config": {"stage_id": "inc"}}, None),
        }
        names = list(shapes)

        def graph_of(kind: str) -> dict[str, object]:
            return {"description": f"load {kind}", "version": "1", "root": shapes[kind][0]}

        def input_of(kind: str, x: int) -> object:
            return [x + j for j in range(stages)] if kind == "map" else x

        def expected(kind: str, x: int) -> object:
            want = shapes[kind][1]
            return [x + j + 1 for j in range(stages)] if want is None else want(x)

        def warm() -> int:
            pools = client.request("GET", "/v1/health")[1]["data"]["warm_sandboxes"] or {}
            return len(pools.get("busy", [])) + len(pools.get("idle", []))

        def settled() -> int:
            """Waits (bounded) until no warm sandbox is left; how many are."""
            deadline = time.monotonic() + 30
            while warm() and time.monotonic() < deadline:
                time.sleep(0.25)
            time.sleep(0.5)
            return warm()

        list(client.run(graph_of("sequential"), -1))  # build the program once
        daemon = psutil.Process(proc.pid)
        base_warm = settled()
        base_rss, base_fds = daemon.memory_info().rss, daemon.num_fds()

        def one(i: int) -> bool:
            kind = names[i % len(names)]
            events = list(Client(sock).run(graph_of(kind), input_of(kind, i * 1000)))
            good = events[-1]["event"] == "run_finished" and events[-1]["output"] == expected(kind, i * 1000)
            if not good:
                last = events[-1]
                print(f"wrong answer for client {i} ({kind}): {last.get('status')} {last.get('error')}",
                      file=sys.stderr)
            return good

        hostile = {"bad_json": 0, "huge_body": 0, "half_headers": 0, "wrong_uid": 0}

        def attack(k: int) -> None:
            kind = list(hostile)[k % 4]
            if kind == "bad_json":
                ok = b" 400 " in raw(sock, b"POST /v1/runs HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n{x:")[:20]
            elif kind == "huge_body":
                ok = b" 413 " in raw(sock, b"POST /v1/runs HTTP/1.1\r\nHost: x\r\nContent-Length: 9999999999\r\n\r\n")[:20]
            elif kind == "half_headers":
                raw(sock, b"POST /v1/runs HTTP/1.1\r\nHost: x\r\nContent-Le", close_early=True)
                ok = True
            else:
                ok = " 403 " in wrong_uid(sock)
            hostile[kind] += int(ok)

        t0 = time.monotonic()
        with cf.ThreadPoolExecutor(max_workers=clients + 8) as pool:
            runs = [pool.submit(one, i) for i in range(clients)]
            attacks = [pool.submit(attack, k) for k in range(16)]
            correct = sum(f.result(timeout=600) for f in runs)
            for a in attacks:
                a.result(timeout=120)
        elapsed = time.monotonic() - t0
        peak_warm = warm()
        after_warm = settled()
        # A connection the daemon is still letting go (a client that closed early) holds
        # its fd a moment longer: fds must come back within a few seconds, not at once.
        deadline = time.monotonic() + 10
        while daemon.num_fds() > base_fds and time.monotonic() < deadline:
            time.sleep(0.25)
        rss, fds = daemon.memory_info().rss, daemon.num_fds()
        print(f"clients={clients} stages/graph={stages} sandboxed stage runs={clients * stages} "
              f"(graphs: {', '.join(names)} in turn)")
        print(f"correct outputs: {correct}/{clients} in {elapsed:.1f} s "
              f"({clients * stages / elapsed:.0f} sandboxed stages/s)")
        print(f"hostile requests rejected as expected: {hostile} (of 4 each)")
        print(f"daemon RSS: {base_rss / 2**20:.1f} MiB before, {rss / 2**20:.1f} MiB after; "
              f"open fds: {base_fds} before, {fds} after; warm sandboxes: {base_warm} before, {peak_warm} "
              f"right after the load, {after_warm} once idle ones expired")
        ok = correct == clients and all(v == 4 for v in hostile.values()) and fds <= base_fds and after_warm == 0
        ok = ok and rss < base_rss + 64 * 2**20
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
