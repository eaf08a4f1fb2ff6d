"""An in-memory executor: the executor seam's test double.

It runs a Python stage's ``execute`` in this process, with no Nix build and
no sandbox, so the interpreter, the budget, retries and the higher-order
stages can be tested in milliseconds. It is used only by the fast tier's
tests of those layers; everything that is about isolation, builds or the
daemon runs for real (bwrap, Nix) in the other tiers.
"""

from __future__ import annotations

import time
import traceback
from typing import Any

import trio

from noether_nix.engine.executor import StageCall, StageOutcome


class InMemoryExecutor:
    def __init__(self) -> None:
        self.calls: list[StageCall] = []
        self.running = 0
        self.peak = 0  # the most calls in flight at once

    async def execute(self, call: StageCall) -> StageOutcome:
        self.calls.append(call)
        if call.language != "python":
            return StageOutcome(status="spawn_failed", message=f"the in-memory executor runs python, not "
                                f"{call.language}", isolation="none")
        self.running += 1
        self.peak = max(self.peak, self.running)
        started = time.monotonic()
        try:
            scope: dict[str, Any] = {"__name__": "stage"}
            exec(compile(call.code, f"<stage {call.label}>", "exec"), scope)
            with trio.move_on_after(call.limits.timeout_s) as deadline:
                out = scope["execute"](call.input)
                if hasattr(out, "__await__"):
                    out = await out
                await trio.lowlevel.checkpoint()
            if deadline.cancelled_caught:
                return StageOutcome(status="timed_out", message=f"timed out after {call.limits.timeout_s:g}s",
                                    isolation="none")
        except Exception as e:
            return StageOutcome(status="error", message="exited with status 1", exit_code=1, isolation="none",
                                stderr_tail="".join(traceback.format_exception_only(e)).strip())
        finally:
            self.running -= 1
        return StageOutcome(status="ok", message="ok", output=out, isolation="none",
                            wall_ms=int((time.monotonic() - started) * 1000))
