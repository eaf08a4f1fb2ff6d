"""One timed call of a Pure stdlib stage on the fast path (``engine.fastpath``).

The long Sequential and ``reduce`` call a Pure stage one value at a time: on the
event loop when the value is small, else on a worker thread within the stage's
time budget (``engine.offload``). The call is sampled into the run's ``Summary``
and counted, and a failure becomes the same ``stage_failed`` the traced path
gives; a time-out stays a time-out.
"""

from __future__ import annotations

import time
from typing import Any

from noether_nix.deferred import trio
from noether_nix.engine.fastpath import FastPure, Summary
from noether_nix.engine.offload import maybe_off_loop, small
from noether_nix.engine.options import StageError
from noether_nix.engine.state import IN_PROCESS
from noether_nix.errors import NoetherError
from noether_nix.stdlib._shapes import StageFailure


async def timed_call(summary: Summary, fast: FastPure, value: Any, *, name: str, what: str, path: str,
                     limiter: trio.CapacityLimiter | None, budget_s: float | None) -> Any:
    """``fast.impl(value)``; ``name`` names the stage in a failure ("stage text_upper"),
    ``what`` the work in a time-out (which may add who called it)."""
    t = time.perf_counter_ns()
    try:
        out = await maybe_off_loop(small(value), fast.impl, value, limiter=limiter, budget_s=budget_s, what=what,
                                   path=path)
    except (StageFailure, NoetherError) as e:
        if isinstance(e, StageError) and e.code == "stage_timed_out":
            raise
        summary.calls += 1
        message = f"{name} failed: {e.message if isinstance(e, NoetherError) else e}"
        raise StageError("stage_failed", message, path, usage=IN_PROCESS) from None
    summary.sample(time.perf_counter_ns() - t)
    summary.calls += 1
    return out
