"""The map rows of bench/peer.py (``MAP_DRIVER``), source trees side by side.

Usage: .venv/bin/python bench/map_ab.py [--rounds N] NAME=TREE [NAME=TREE ...]

Each round runs the driver once per tree (``PYTHONPATH=TREE``, this venv's
Python, a fresh process in a temporary directory, a rotating first tree) on one throwaway
``NOETHER_HOME``; prints min / median / max of the whole ``engine.run`` and
of the map's loop in calls/s, and the load average before and after.
A tree is a checkout, e.g. ``git worktree add /tmp/old <commit>``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer import MAP_DRIVER, MAP_N


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("trees", nargs="+", metavar="NAME=TREE")
    args = ap.parse_args()
    trees = dict(t.split("=", 1) for t in args.trees)
    names = list(trees)
    home = tempfile.mkdtemp(prefix="noether-map-ab-")
    results: dict[str, list[dict[str, float]]] = {k: [] for k in names}
    print(f"load before: {os.getloadavg()[0]:.2f}")
    for r in range(args.rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            env = dict(os.environ, PYTHONPATH=trees[k], NOETHER_HOME=home)
            out = subprocess.run([sys.executable, "-c", MAP_DRIVER, str(MAP_N)], env=env, check=True, cwd=home,
                                 capture_output=True, text=True).stdout
            results[k].append(json.loads(out.strip().splitlines()[-1]))
    print(f"load after: {os.getloadavg()[0]:.2f}")
    for k, runs in results.items():
        whole = sorted(MAP_N / m["run_s"] / 1e6 for m in runs)
        loop = sorted(MAP_N / m["inner_s"] / 1e6 for m in runs)
        print(f"{k:<16} whole run {whole[0]:.2f} / {statistics.median(whole):.2f} / {whole[-1]:.2f} M calls/s; "
              f"loop {loop[0]:.1f} / {statistics.median(loop):.1f} / {loop[-1]:.1f} M; "
              f"RSS {statistics.median(m['maxrss_mib'] for m in runs):.1f} MiB")


if __name__ == "__main__":
    main()
