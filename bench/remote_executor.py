"""200 trivial Python stage calls: remote (BuildGrid + 2 local noether workers) vs local.

    .venv/bin/python bench/remote_executor.py [--calls 200] [--concurrency 8]

Both sides run the same calls (one program, distinct inputs, NonDeterministic
so the ActionCache is not consulted and every call runs) with the same
concurrency. The program is built once on each side before timing. Prints one
JSON object: wall time, calls/s and the per-action overhead of going remote
((remote - local) wall time / calls, at equal concurrency), plus the medians
of the ExecutedActionMetadata phases.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from noether_nix.engine.executor import StageCall
from noether_nix.model.effects import EffectSet, NonDeterministic
from noether_nix.nix.registry import ProgramRegistry
from noether_nix.remote.executor import RemoteExecutor, RemoteSettings
from noether_nix.remote.launcher import run_local
from noether_nix.sandbox.policy import Limits
from tests.remote.cluster import BuildGrid, Postgres, Worker

CODE = "def execute(x):\n    return x + 1\n"


def calls(n: int) -> list[StageCall]:
    return [StageCall(program_id="bench-remote-plus-one", language="python", code=CODE,
                      effects=EffectSet.of([NonDeterministic()]), input=i, limits=Limits(), isolation="bwrap",
                      label="bench") for i in range(n)]


async def run_all(fn: Any, cs: list[StageCall], concurrency: int) -> tuple[float, list[Any]]:
    limiter = trio.CapacityLimiter(concurrency)
    out: list[Any] = [None] * len(cs)

    async def one(i: int) -> None:
        async with limiter:
            out[i] = await fn(cs[i])

    started = time.monotonic()
    async with trio.open_nursery() as n:
        for i in range(len(cs)):
            n.start_soon(one, i)
    wall = time.monotonic() - started
    bad = [(c.input, o.status, o.message) for c, o in zip(cs, out, strict=True) if o.output != c.input + 1]
    assert not bad, bad[:5]
    return wall, out


def median(xs: list[Any]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


async def main(n: int, concurrency: int, per_worker: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="noether-bench-remote-"))
    home = root / "local-home"
    home.mkdir()
    import os

    os.environ["NOETHER_HOME"] = str(home)
    programs = ProgramRegistry(home / "noether.db")
    pg = Postgres()
    timings: dict[str, float] = {}
    t = time.monotonic()
    pg.start()
    timings["postgres_start_s"] = time.monotonic() - t
    bg = BuildGrid(root / "bgd", pg.url)
    workers = [Worker(root / f"w{i}", bg.url, f"bench-{i}", "--concurrency", str(per_worker)) for i in (1, 2)]
    try:
        t = time.monotonic()
        bg.migrate()
        bg.start()
        timings["buildgrid_start_s"] = time.monotonic() - t
        for w in workers:
            w.start()
        ex = RemoteExecutor(RemoteSettings(url=bg.url))
        try:
            cs = calls(n)
            warm = calls(2 * per_worker + 2)  # every worker builds the program once
            await run_all(ex.execute, [StageCall(**{**{f: getattr(c, f) for f in c.__struct_fields__},
                                                    "input": -1 - i}) for i, c in enumerate(warm)], concurrency)

            async def local(c: StageCall) -> Any:
                return await run_local(c, programs=programs, profile="default")

            await local(cs[0])
            local_wall, _ = await run_all(local, cs, concurrency)
            remote_wall, outs = await run_all(ex.execute, cs, concurrency)
        finally:
            await ex.aclose()
    finally:
        for w in workers:
            w.stop()
        bg.stop()
        pg.stop()
    md = [o.remote for o in outs]
    return {
        "calls": n, "concurrency": concurrency, "workers": 2, "leases_per_worker": per_worker,
        "local_wall_s": round(local_wall, 2), "remote_wall_s": round(remote_wall, 2),
        "local_calls_per_s": round(n / local_wall, 1), "remote_calls_per_s": round(n / remote_wall, 1),
        "overhead_ms_per_action": round((remote_wall - local_wall) / n * 1000, 1),
        "median_round_trip_ms": median([m["round_trip_ms"] for m in md]),
        "median_queue_ms": median([m["queue_ms"] for m in md]),
        "median_input_fetch_ms": median([m["input_fetch_ms"] for m in md]),
        "median_execution_ms": median([m["execution_ms"] for m in md]),
        "median_local_stage_wall_ms": median([o.wall_ms for o in outs]),
        **{k: round(v, 2) for k, v in timings.items()},
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--leases-per-worker", type=int, default=2)
    a = ap.parse_args()
    print(json.dumps(trio.run(main, a.calls, a.concurrency, a.leases_per_worker), indent=2))
