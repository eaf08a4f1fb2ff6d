"""Work in the daemon's process, off its event loop, under a time budget.

One event loop serves every client of the daemon: nothing a run does in the
daemon's own process may hold it for long. In-process stages (pure stdlib
stages, the kv and store builtins) and the engine's own work on a value (its
checks, its hash, its encoding for a sandbox) run inline only while the
value is small, where a thread hop (~0.1 ms) would cost more than the work;
larger values, stages whose work can grow faster than their input (regular
expressions, replacements) and everything that waits on the database go to a
worker thread, at most ``engine.in_process_threads`` in the settings at once.

A thread cannot be killed. Past its budget the caller stops waiting and fails
(``stage_timed_out``); the thread finishes in the background, keeping its
slot until then (so runaway work cannot multiply threads), and its result is
dropped. What bounds the work itself is the size cap on every value
(``max_value_bytes``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from noether_nix.deferred import PerRun, trio
from noether_nix.engine.noloop import NO_LOOP
from noether_nix.engine.options import StageError
from noether_nix.model.jcs import encoded_size

T = TypeVar("T")

#: Values up to this many bytes of JSON are worked on inline, on the event loop.
INLINE_MAX_BYTES = 64 * 1024
#: Worker threads when no engine says otherwise (``engine.in_process_threads`` in the settings).
DEFAULT_THREADS = 4

_DEFAULT_LIMITER = PerRun("noether_value_threads", lambda: trio.CapacityLimiter(DEFAULT_THREADS))


def small(value: Any) -> bool:
    """Whether ``value`` is cheap enough to work on inline (measured with an early stop)."""
    if type(value) is str:  # the commonest value: its work is linear in its length
        return len(value) <= INLINE_MAX_BYTES
    return encoded_size(value, INLINE_MAX_BYTES) <= INLINE_MAX_BYTES


def default_limiter() -> trio.CapacityLimiter:
    return _DEFAULT_LIMITER.get()


async def off_loop(fn: Callable[..., T], *args: Any, limiter: trio.CapacityLimiter | None = None,
                   budget_s: float | None = None, what: str = "in-process work", path: str | None = None) -> T:
    """``fn(*args)`` on a worker thread; cancelling the caller stops the wait
    (the thread finishes on its own). Past ``budget_s`` seconds (waiting for a
    thread included): ``stage_timed_out`` naming ``what``.

    In a run without an event loop (``engine.noloop``) there is no loop to keep
    free: ``fn`` runs right here, and past its budget the outcome is the same error."""
    if NO_LOOP.get():
        started = time.monotonic()
        out = fn(*args)
        if budget_s is not None and time.monotonic() - started > budget_s:
            raise _past_budget(what, budget_s, path, finished=True)
        return out
    with trio.move_on_after(budget_s if budget_s is not None else float("inf")) as scope:
        return await trio.to_thread.run_sync(fn, *args, limiter=limiter or default_limiter(),
                                             abandon_on_cancel=True)
    assert scope.cancelled_caught and budget_s is not None
    raise _past_budget(what, budget_s, path)


def _past_budget(what: str, budget_s: float, path: str | None, *, finished: bool = False) -> StageError:
    how = "finished past its {:g} s budget in this process" if finished else \
        "ran past its {:g} s budget in the daemon's process and was abandoned"
    return StageError("stage_timed_out", f"{what} {how.format(budget_s)}", path or "root",
                      details={"status": "timed_out", "budget_s": budget_s})


async def maybe_off_loop(inline: bool, fn: Callable[..., T], *args: Any, limiter: trio.CapacityLimiter | None = None,
                         budget_s: float | None = None, what: str = "in-process work",
                         path: str | None = None) -> T:
    """``fn(*args)`` right here when ``inline``, else as ``off_loop``."""
    if inline:
        return fn(*args)
    return await off_loop(fn, *args, limiter=limiter, budget_s=budget_s, what=what, path=path)
