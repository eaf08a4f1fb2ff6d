"""A warm request to the daemon, by how long the host was quiet before it.

The peer table's raw-request row (``bench/peer.py``) times one request per
round, after the round's other cases have run and the daemon has sat idle.
This shows how much of that row is the quiet before it: the same warm trivial
stage, one raw request at a time, after a gap of 0 / 5 / 30 / 100 ms (the gaps
interleaved), with the run's and the stage's own durations from the answer's
trace (the engine's clock, whole ms). min / median / max per gap.

    .venv/bin/python bench/daemon_idle.py [rounds]
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer import Bench, say

GAPS_S = (0.0, 0.005, 0.03, 0.1)


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    tmp = Path(tempfile.mkdtemp(prefix="noether-idle-bench-"))
    os.chmod(tmp, 0o755)
    bench = Bench(tmp)
    bench.start_daemon()
    from noether_nix.client import Client

    doc = json.loads(bench.graph.read_text())

    def once() -> tuple[float, int, int]:
        started = time.perf_counter()
        events = list(Client(str(bench.sock)).run(doc, "x", {"cache": False}))
        took = (time.perf_counter() - started) * 1000
        last = events[-1]
        assert last["status"] == "ok", last
        return took, last["duration_ms"], last["trace"]["stages"][0]["duration_ms"]

    try:
        for _ in range(20):  # the stage's warm sandbox is up, its caches filled
            once()
        found: dict[float, list[tuple[float, int, int]]] = {g: [] for g in GAPS_S}
        for i in range(rounds):
            for gap in GAPS_S[i % len(GAPS_S):] + GAPS_S[:i % len(GAPS_S)]:
                time.sleep(gap)
                found[gap].append(once())
        print(f"warm trivial stage through the daemon after a quiet gap; {rounds} rounds, "
              f"load {os.getloadavg()[0]:.2f}; request min / median / max; the run's and the stage's own "
              f"duration (engine clock, mean of whole ms)")
        for gap, rows in found.items():
            xs = [r[0] for r in rows]
            print(f"  gap {gap * 1000:5.0f} ms: request {min(xs):5.2f} / {statistics.median(xs):5.2f} / "
                  f"{max(xs):5.2f} ms; run {statistics.mean(r[1] for r in rows):4.2f} ms; "
                  f"stage {statistics.mean(r[2] for r in rows):4.2f} ms")
    finally:
        bench.stop_daemon()
        shutil.rmtree(tmp, ignore_errors=True)
    say("done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
