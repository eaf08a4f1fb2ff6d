"""In-process work stays off the event loop, under a time budget (security finding 4).

A 2 KB graph of 19 ``to_json`` steps used to hold the daemon's event loop
for 29 s. Pure stages on large values, stages whose work can outgrow their
input (regular expressions), the kv and store stages, and the engine's own
checks and hashes of large values now run on worker threads; a stage that
runs past its time budget fails with ``stage_timed_out`` while its thread
finishes in the background. The live daemon's side is
tests/server/test_in_process_off_loop.py.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from noether_nix.engine.engine import Engine, RunOptions, RunResult
from noether_nix.settings import EngineSettings
from tests.engine.conftest import graph

# Backtracks for minutes (Python's re would hold the GIL all that time).
REDOS = {"text": "x" * 5000, "pattern": "(x+x+)+y"}


def rows(n: int) -> list[dict[str, Any]]:
    return [{"x": i, "y": [1.5, 2, "z"], "name": f"row {i}"} for i in range(n)]


async def loop_stall_while(work: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    """The longest the event loop went without running a 10 ms ticker while ``work`` ran, and its result."""
    longest = 0.0
    last = time.monotonic()
    result: list[Any] = []

    async def ticker(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal longest, last
        last = time.monotonic()
        task_status.started()
        while True:
            await trio.sleep(0.01)
            now = time.monotonic()
            longest = max(longest, now - last - 0.01)
            last = now

    async with trio.open_nursery() as nursery:
        await nursery.start(ticker)
        result.append(await work())
        # Work that never let the loop run at all shows here.
        longest = max(longest, time.monotonic() - last - 0.01)
        nursery.cancel_scope.cancel()
    return longest, result[0]


def seq(name: str, n: int) -> dict[str, Any]:
    return graph({"op": "Sequential", "stages": [{"op": "Stage", "id": name}] * n})


async def test_the_to_json_doubling_graph_does_not_hold_the_loop(engine: Engine) -> None:
    async def work() -> RunResult:
        return await engine.run(seq("to_json", 19), '"' * 1000, RunOptions(optimize=False))

    stall, res = await loop_stall_while(work)
    assert res.status == "failed" and res.error is not None and res.error["code"] == "value_too_large"
    assert stall < 1.0, f"the event loop stalled {stall:.2f} s"


async def test_large_values_through_pure_stages_do_not_hold_the_loop(engine: Engine) -> None:
    value = rows(60_000)  # ~2.5 MB of JSON: seconds of checking and hashing per stage

    async def work() -> RunResult:
        return await engine.run(seq("identity", 2), value, RunOptions(optimize=False))

    stall, res = await loop_stall_while(work)
    assert res.status == "ok" and res.output == value, res.error
    # Before: the whole run (4+ s here). What is left is mostly Python's garbage collector.
    assert stall < 2.5, f"the event loop stalled {stall:.2f} s"


async def test_a_concurrent_graph_of_large_values_does_not_hold_the_loop(engine: Engine) -> None:
    value = rows(30_000)
    par = graph({"op": "Parallel", "branches": {k: {"op": "Stage", "id": "list_dedup"} for k in "abcd"}})
    fan = graph({"op": "Fanout", "source": {"op": "Stage", "id": "identity"},
                 "targets": [{"op": "Stage", "id": "list_length"}, {"op": "Stage", "id": "to_json"}]})

    async def work() -> list[RunResult]:
        return [await engine.run(par, value, RunOptions(optimize=False)),
                await engine.run(fan, value, RunOptions(optimize=False))]

    stall, (p, f) = await loop_stall_while(work)
    assert p.status == "ok" and p.output == {k: value for k in "abcd"}, p.error
    assert f.status == "ok" and f.output[0] == len(value), f.error
    assert stall < 2.5, f"the event loop stalled {stall:.2f} s"


async def test_a_runaway_regex_fails_at_its_budget_and_the_loop_goes_on(engine: Engine) -> None:
    async def work() -> tuple[RunResult, float]:
        started = time.monotonic()
        res = await engine.run(graph({"op": "Stage", "id": "regex_match"}), REDOS, RunOptions(timeout_secs=1))
        return res, time.monotonic() - started

    stall, (res, took) = await loop_stall_while(work)
    assert res.status == "failed" and res.error is not None and res.error["code"] == "stage_timed_out", res.error
    assert "budget" in res.error["message"]
    assert res.trace["stages"][0]["status"]["Failed"]["code"] == "stage_timed_out"
    assert took < 5, f"the budget is 1 s, the run took {took:.1f} s"
    assert stall < 0.5, f"the event loop stalled {stall:.2f} s"
    # Small in-process work goes on inline meanwhile.
    assert (await engine.run(graph({"op": "Stage", "id": "text_upper"}), "next", RunOptions())).output == "NEXT"


async def test_runaway_patterns_in_a_concurrent_graph_share_the_threads_and_stop() -> None:
    # Two worker threads, four runaway patterns at once (and a schema pattern): each stops
    # at its budget, the ones waiting for a thread included; the loop never stalls.
    engine = Engine(EngineSettings(in_process_threads=2))
    schema = {"data": "x" * 5000, "schema": {"type": "string", "pattern": "(x+x+)+y"}}
    branches: dict[str, Any] = {k: {"op": "Stage", "id": "regex_match"} for k in "abcd"}
    par = graph({"op": "Parallel", "branches": branches})

    async def work() -> tuple[RunResult, RunResult, float]:
        started = time.monotonic()
        res = await engine.run(par, REDOS, RunOptions(timeout_secs=1))
        res2 = await engine.run(graph({"op": "Stage", "id": "json_schema_validate"}), schema,
                                RunOptions(timeout_secs=1))
        return res, res2, time.monotonic() - started

    stall, (res, res2, took) = await loop_stall_while(work)
    assert res.error is not None and res.error["code"] == "stage_timed_out", res.error
    assert res2.error is not None and res2.error["code"] == "stage_timed_out", res2.error
    assert took < 10 and stall < 0.5, (took, stall)
    assert (await engine.run(graph({"op": "Stage", "id": "regex_match"}), {"text": "abc", "pattern": "b"},
                             RunOptions())).output["matched"] is True


async def test_kv_stages_run_off_the_loop_and_keep_working(engine: Engine) -> None:
    big = rows(80_000)
    kv_set = graph({"op": "Stage", "id": "kv_set"})
    kv_get = graph({"op": "Stage", "id": "kv_get"})

    async def work() -> RunResult:
        res = await engine.run(kv_set, {"key": "k", "value": big, "namespace": "t"}, RunOptions())
        assert res.status == "ok", res.error
        return await engine.run(kv_get, {"key": "k", "namespace": "t"}, RunOptions())

    stall, res = await loop_stall_while(work)
    assert res.output == big
    assert stall < 2.5, f"the event loop stalled {stall:.2f} s"
