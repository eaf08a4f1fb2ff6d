"""In-process stdlib throughput: stage calls per second.

Usage: .venv/bin/python bench/stdlib_throughput.py [N]   (default N = 100000)

1. Through the engine (the target, >= 50,000 calls/s): one run of the graph
   ``map`` with ``{"items": N texts, "stage_id": "text_upper"}``, in a
   throwaway NOETHER_HOME, with ``trace: "full"``: each of the N inner calls
   is a traced stage run (events, input/output hashes, budget), and the
   run's trace is stored. Best of 3 runs (no Nix, no sandbox). The default
   (summarised) trace is bench/peer.py's map row.
2. The stage functions alone, ``PURE[name](value)``, over N distinct inputs,
   median of 5 runs: what the engine adds is the difference.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

TARGET_THROUGH_ENGINE = 50_000


def through_engine(n: int, runs: int = 3) -> float:
    os.environ["NOETHER_HOME"] = tempfile.mkdtemp(prefix="noether-bench-")
    import trio

    from noether_nix.engine.engine import Engine, RunOptions

    engine = Engine()
    graph = {"description": "bench", "version": "1", "root": {"op": "Stage", "id": "map"}}
    items = [f"item {i} with some words" for i in range(n)]
    best = float("inf")
    for _ in range(runs):
        async def once() -> float:
            start = time.perf_counter()
            res = await engine.run(graph, {"items": items, "stage_id": "text_upper"}, RunOptions(trace="full"))
            took = time.perf_counter() - start
            assert res.status == "ok" and res.output[-1] == items[-1].upper(), res.error
            assert len(res.trace["stages"]) == n + 1
            return took

        best = min(best, trio.run(once))
    return n / best


def rate(fn: Callable[[Any], Any], inputs: list[Any], runs: int = 5) -> float:
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        for value in inputs:
            fn(value)
        timings.append(time.perf_counter() - start)
    return len(inputs) / statistics.median(timings)


def main(argv: list[str]) -> int:
    n = int(argv[0]) if argv else 100_000
    words = [f"item {i} with some words" for i in range(n)]
    cases: list[tuple[str, list[Any]]] = [
        ("text_upper", words),
        ("text_length", words),
        ("to_number", [str(i * 0.5) for i in range(n)]),
        ("text_split", [{"text": w, "delimiter": " "} for w in words]),
        ("json_path", [{"data": {"a": {"b": [i, i + 1]}}, "path": "$.a.b[1]"} for i in range(n)]),
        ("regex_match", [{"text": w, "pattern": r"(\d+)"} for w in words]),
        ("num_sum", [[float(i), 1.0, 2.0] for i in range(n)]),
    ]
    engine_rate = through_engine(n)
    print(f"map(text_upper) through the engine: {engine_rate:,.0f} stage calls/s ({n:,} items, best of 3)")
    ok = engine_rate >= TARGET_THROUGH_ENGINE
    if not ok:
        print(f"below the {TARGET_THROUGH_ENGINE:,}/s target", file=sys.stderr)
    from noether_nix.stdlib.registry import PURE

    print(f"{'stage alone':<14} {'calls/s':>12}   ({n:,} distinct inputs, median of 5)")
    for name, inputs in cases:
        r = rate(PURE[name], inputs)
        print(f"{name:<14} {r:>12,.0f}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
