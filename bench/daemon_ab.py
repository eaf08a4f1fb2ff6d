"""Warm requests to daemons of different source trees, side by side.

Usage: .venv/bin/python bench/daemon_ab.py [--requests N] NAME=TREE [NAME=TREE ...]

One throwaway ``NOETHER_HOME`` with the trivial stage of ``bench/peer.py``; one
daemon per tree (``PYTHONPATH=TREE``, this venv's Python, ``python -m
noether_nix.cli.main daemon``), each on its own socket. Requests go to the
daemons in turn (alternating which goes first), back to back, one raw request
each (``noether_nix.client``). For each tree: the request's median and min /
max, and the daemon process's own CPU time per request (user + system, from
``/proc``: what the daemon spends, its sandboxes aside). A tree is a checkout,
e.g. ``git worktree add /tmp/old <commit>``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer import Bench


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("trees", nargs="+", metavar="NAME=TREE")
    args = ap.parse_args()
    trees = dict(t.split("=", 1) for t in args.trees)
    tmp = Path(tempfile.mkdtemp(prefix="noether-daemon-ab-"))
    os.chmod(tmp, 0o755)
    bench = Bench(tmp)  # the home, the settings and the trivial stage (its program built)
    from noether_nix.client import Client

    doc = json.loads(bench.graph.read_text())
    daemons: dict[str, subprocess.Popen[bytes]] = {}
    socks = {k: tmp / f"{k}.sock" for k in trees}
    try:
        for k, tree in trees.items():
            env = {**bench.env, "PYTHONPATH": tree}
            daemons[k] = subprocess.Popen([sys.executable, "-m", "noether_nix.cli.main", "daemon", "--socket",
                                           str(socks[k]), "--config", bench.env["NOETHER_CONFIG"]], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True)
        deadline = time.monotonic() + 120
        for k, sock in socks.items():
            while not sock.exists():
                if daemons[k].poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the daemon of {k} did not start")
                time.sleep(0.05)

        def one(k: str) -> float:
            started = time.perf_counter()
            events = list(Client(str(socks[k])).run(doc, "x", {"cache": False}))
            assert events[-1]["status"] == "ok", events[-1]
            return (time.perf_counter() - started) * 1000

        for k in trees:  # warm sandboxes up, caches filled
            for _ in range(30):
                one(k)
        procs = {k: psutil.Process(p.pid) for k, p in daemons.items()}
        took: dict[str, list[float]] = {k: [] for k in trees}
        cpu = dict.fromkeys(trees, 0.0)
        names = list(trees)
        print(f"load before: {os.getloadavg()[0]:.2f}")
        for r in range(args.requests):
            for k in names[r % len(names):] + names[:r % len(names)]:
                before = sum(procs[k].cpu_times()[:2])
                took[k].append(one(k))
                cpu[k] += sum(procs[k].cpu_times()[:2]) - before
        print(f"load after: {os.getloadavg()[0]:.2f}; {args.requests} requests a daemon, back to back")
        for k in names:
            xs = took[k]
            print(f"  {k:<12} request {statistics.median(xs):5.2f} ms ({min(xs):.2f}–{max(xs):.2f}); "
                  f"daemon CPU {cpu[k] / args.requests * 1000:.2f} ms a request")
    finally:
        for p in daemons.values():  # each in a session of its own: its group is its own
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(60)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
