"""What bounding the run history and values costs.

Usage: .venv/bin/python bench/run_history.py

* ``RunStore.finish`` of a typical small run (4 stage entries, 10 events)
  into a history of 0, 1,000 and 10,000 finished runs, the last one at the
  ``keep_runs`` limit so every store also drops the oldest run; median of
  200 stores. ``synchronous=FULL`` is on, as in use: each store is a commit.
* ``cap_stored_run`` of a run over its cap (50,000 stage entries, 20,000
  events, a 1 GB-if-encoded output), once.
* ``model.jcs.encoded_size`` (no limit reached) against ``value_hash`` of the
  same value, which every stage call already computes; median of 20.

A throwaway ``$NOETHER_HOME``; numbers vary with the machine's load.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def small_run(run_id: str) -> tuple[dict[str, Any], list[Any]]:
    entries = [{"stage_id": "s" * 64, "node_path": f"root.stages[{i}]", "name": "step", "status": "Ok",
                "attempt": 1, "duration_ms": 3, "input_hash": "h" * 64, "output_hash": "h" * 64, "step_index": i}
               for i in range(4)]
    events: list[Any] = [{"event": "stage_finished", "run_id": run_id, "node_path": "root", "stage_id": "s" * 64,
                          "status": "ok", "wall_ms": 3} for _ in range(9)]
    events.append({"event": "run_finished", "run_id": run_id, "status": "ok", "duration_ms": 12, "output": "done"})
    return {"composition_id": "c", "run_id": run_id, "status": "Ok", "stages": entries, "warnings": []}, events


def bench_finish(history: int) -> float:
    from noether_nix.store.db import connect
    from noether_nix.store.runs import RunStore

    home = tempfile.mkdtemp(prefix="noether-bench-")
    conn = connect(Path(home) / "noether.db")
    runs = RunStore(conn, keep_runs=history) if history else RunStore(conn)
    conn.execute("BEGIN")
    for i in range(history):  # the history, written in one transaction
        trace, events = small_run(f"old{i}")
        conn.execute("INSERT INTO runs (run_id, composition_id, status, started_at, trace, events, stored_bytes)"
                     " VALUES (?, 'c', 'ok', ?, ?, '[]', 2000)", (f"old{i}", i, str(trace)))
    conn.execute("COMMIT")
    times = []
    for i in range(200):
        run_id = f"new{i}"
        runs.start(run_id, "c")
        trace, events = small_run(run_id)
        t = time.perf_counter()
        runs.finish(run_id, "ok", trace, events, 0)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    os.environ["NOETHER_HOME"] = tempfile.mkdtemp(prefix="noether-bench-")
    from noether_nix.model.jcs import encoded_size, value_hash
    from noether_nix.store.runs import cap_stored_run

    print("RunStore.finish of a small run (median of 200):")
    for history in (0, 1_000, 10_000):
        print(f"  history {history:>6,} runs{' (at keep_runs)' if history else ''}: "
              f"{bench_finish(history) * 1000:.2f} ms")

    entries = [{"stage_id": "s" * 64, "node_path": f"root.stages[{i}]", "status": "Ok"} for i in range(50_000)]
    events = [{"event": "stage_output", "run_id": "r", "node_path": "root", "text": "x" * 200}
              for _ in range(20_000)]
    events.append({"event": "run_finished", "run_id": "r", "status": "ok", "duration_ms": 1,
                   "output": [{"text": "x" * 1000}] * 1_000_000})
    t = time.perf_counter()
    trace_json, events_json = cap_stored_run("r", {"stages": entries}, events, 16 << 20)
    print(f"cap_stored_run of an oversized run: {(time.perf_counter() - t) * 1000:.0f} ms, "
          f"stored {(len(trace_json) + len(events_json)) / 2**20:.1f} MiB")

    values: dict[str, Any] = {
        "small record": {"name": "x", "n": 3, "tags": ["a", "b"]},
        "10,000 records": [{"id": i, "name": f"item{i}", "score": i * 0.5, "ok": True} for i in range(10_000)],
        "1 MB text": "x" * 1_000_000,
        "100,000 ints": list(range(100_000)),
    }
    print("encoded_size vs value_hash (median of 20):")
    for name, v in values.items():
        a = statistics.median(_timed(lambda v=v: encoded_size(v, 64 << 20)) for _ in range(20))
        b = statistics.median(_timed(lambda v=v: value_hash(v)) for _ in range(20))
        print(f"  {name:>15}: encoded_size {a * 1000:8.3f} ms   value_hash {b * 1000:8.3f} ms")
    return 0


def _timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    raise SystemExit(main())
