"""How long hostile in-process graphs hold the event loop (issue 13, finding 4).

Usage: .venv/bin/python bench/event_loop_stall.py

Each graph runs embedded while a 10 ms ticker runs on the same trio loop;
the longest the ticker waited past its 10 ms is the stall a daemon's other
clients would see. Also: the per-call CPU cost of the cheapest stage
(``map`` over 50,000 texts with ``text_upper``, process CPU time, best of 3),
which is what keeping small values inline protects.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

os.environ["NOETHER_HOME"] = tempfile.mkdtemp(prefix="noether-bench-")

import trio

from noether_nix.engine.engine import Engine, RunOptions


async def stall_while(work: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    longest = 0.0
    last = time.monotonic()

    async def ticker(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal longest, last
        last = time.monotonic()
        task_status.started()
        while True:
            await trio.sleep(0.01)
            now = time.monotonic()
            longest = max(longest, now - last - 0.01)
            last = now

    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        await nursery.start(ticker)
        await work()
        longest = max(longest, time.monotonic() - last - 0.01)
        nursery.cancel_scope.cancel()
    return longest, time.monotonic() - started


def seq(name: str, n: int) -> dict[str, Any]:
    return {"description": "b", "version": "1", "root": {"op": "Sequential", "stages": [{"op": "Stage", "id": name}] * n}}


async def main() -> None:
    engine = Engine()
    rows = [{"x": i, "y": [1.5, 2, "z"], "name": f"row {i}"} for i in range(60_000)]
    cases: list[tuple[str, dict[str, Any], Any]] = [
        ("19 x to_json on 1 KB of quotes", seq("to_json", 19), '"' * 1000),
        ("2 x identity on 60k records (~2.5 MB)", seq("identity", 2), rows),
        ("Parallel of 4 list_dedup on 30k records", {"description": "b", "version": "1", "root": {
            "op": "Parallel", "branches": {k: {"op": "Stage", "id": "list_dedup"} for k in "abcd"}}}, rows[:30_000]),
    ]
    print(f"{'graph':<42} {'loop stall':>10} {'run':>8}")
    for name, graph, value in cases:
        async def work(graph: dict[str, Any] = graph, value: Any = value) -> None:
            await engine.run(graph, value, RunOptions(optimize=False))

        stall, took = await stall_while(work)
        print(f"{name:<42} {stall:>9.2f}s {took:>7.1f}s")
    items = [f"item {i} with some words" for i in range(50_000)]
    best = float("inf")
    for _ in range(3):
        t = time.process_time()
        await engine.run({"description": "b", "version": "1", "root": {"op": "Stage", "id": "map"}},
                         {"items": items, "stage_id": "text_upper"}, RunOptions())
        best = min(best, time.process_time() - t)
    print(f"map(text_upper), 50,000 items: {50_000 / best:,.0f} stage calls per CPU second")


if __name__ == "__main__":
    trio.run(main)
