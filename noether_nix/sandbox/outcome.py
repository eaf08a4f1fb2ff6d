"""What one sandboxed run came to: its ``Status``, its ``Result``, and the
``verdict`` that turns what it wrote and how it ended into that Result.

Shared by every way a sandbox is run (``supervisor``, ``blocking``, ``warm``);
imports no trio, so a one-shot run that never needs an event loop
(``blocking``) does not pay for loading one.
"""

from __future__ import annotations

import enum
import json
import signal
from typing import Any, Literal, Protocol

import msgspec

from noether_nix.sandbox.policy import Limits

__all__ = ["CgroupEvents", "Exchange", "Result", "Status", "verdict"]


class Status(enum.StrEnum):
    OK = "ok"
    ERROR = "error"
    SIGNAL = "signal"
    TIMED_OUT = "timed_out"
    OUTPUT_LIMIT = "output_limit"
    MEMORY_LIMIT = "memory_limit"
    PIDS_LIMIT = "pids_limit"
    SPAWN_FAILED = "spawn_failed"
    PROTOCOL_ERROR = "protocol_error"
    CANCELLED = "cancelled"


class Result(msgspec.Struct, kw_only=True):
    status: Status
    message: str
    isolation: Literal["bwrap", "none"]
    exit_code: int | None = None
    signal: int | None = None
    output: Any = None
    stdout_bytes: bytes | None = None
    wall_ms: int = 0
    cpu_ms: int | None = None
    max_rss_kb: int | None = None
    stderr_tail: str = ""

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


class Exchange(msgspec.Struct):
    """What one run wrote, and whether the supervisor stopped it."""

    stdout: bytes
    stderr_tail: str
    verdict: Status | None  # TIMED_OUT or OUTPUT_LIMIT when the supervisor killed it


class CgroupEvents(Protocol):
    """What ``verdict`` asks of a run's cgroup: did it kill for memory, refuse a process?"""

    def oom_killed(self) -> bool: ...

    def pids_exhausted(self) -> bool: ...


def verdict(ex: Exchange, rc: int | None, *, limits: Limits, cgroup: CgroupEvents | None,
            mode: Literal["bwrap", "none"],
            expect_json: bool, wall_ms: int, cpu_ms: int | None, max_rss_kb: int | None) -> Result:
    """One run's Result from what it wrote, how it ended (``rc``: its exit code,
    or minus the signal that killed it) and its cgroup's events."""
    tail = ex.stderr_tail
    usage: dict[str, Any] = {
        "wall_ms": wall_ms,
        "cpu_ms": cpu_ms,
        "max_rss_kb": max_rss_kb,
        "stderr_tail": tail,
        "isolation": mode,
        "stdout_bytes": None if expect_json else ex.stdout,
    }
    if ex.verdict is Status.TIMED_OUT:
        return Result(status=ex.verdict, message=f"timed out after {limits.timeout_s:g}s; the process tree was killed",
                      **usage)
    if ex.verdict is Status.OUTPUT_LIMIT:
        return Result(status=ex.verdict, message=f"stdout passed the {limits.max_output_bytes}-byte cap; "
                      "the process tree was killed", **usage)
    if cgroup is not None and rc != 0 and cgroup.oom_killed():
        return Result(status=Status.MEMORY_LIMIT, exit_code=rc,
                      message=f"ran out of memory (limit {limits.memory_bytes} bytes)", **usage)
    if cgroup is not None and rc != 0 and cgroup.pids_exhausted():
        return Result(status=Status.PIDS_LIMIT, exit_code=rc,
                      message=f"hit the process limit ({limits.max_pids})", **usage)
    if rc is not None and rc < 0:
        sig = -rc
        return Result(status=Status.SIGNAL, signal=sig, exit_code=128 + sig,
                      message=f"killed by signal {signal.Signals(sig).name}", **usage)
    if mode == "bwrap" and rc == 1 and tail.startswith("bwrap: "):
        # bwrap itself failed (e.g. execvp of a program the policy does not show).
        return Result(status=Status.SPAWN_FAILED, exit_code=127,
                      message=f"could not start the program in the sandbox: {tail.strip()[7:]}", **usage)
    if rc != 0:
        first = tail.strip().splitlines()[-1] if tail.strip() else "no error output"
        return Result(status=Status.ERROR, exit_code=rc, message=f"exited with status {rc}: {first}", **usage)
    raw = ex.stdout
    if not expect_json:
        return Result(status=Status.OK, exit_code=0, message="ok", **usage)
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        shown = raw[:200].decode("utf-8", "replace")
        return Result(status=Status.PROTOCOL_ERROR, exit_code=0,
                      message=f"stdout must be exactly one JSON value ({e}); got: {shown!r}", **usage)
    return Result(status=Status.OK, exit_code=0, output=value, message="ok", **usage)
