"""wait_process: {pid, timeout_ms?} -> {exited, timed_out}; polls every 100 ms, default 30 s."""

import os
import time
from typing import Any


class StageError(Exception):
    pass


def _pid(input: Any) -> int:
    pid = input.get("pid") if isinstance(input, dict) else None
    if isinstance(pid, bool) or not isinstance(pid, (int, float)) or pid != int(pid) or pid <= 0:
        raise StageError("input must be a record with a positive whole number 'pid'")
    return int(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it is just not ours to signal
    return True


def execute(input: Any) -> Any:
    pid = _pid(input)
    timeout_ms = input.get("timeout_ms")
    if timeout_ms is None:
        timeout_ms = 30_000
    if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, (int, float)) or timeout_ms < 0:
        raise StageError("field 'timeout_ms' must be a non-negative number or null")
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        if not _alive(pid):
            return {"exited": True, "timed_out": False}
        if time.monotonic() >= deadline:
            return {"exited": False, "timed_out": True}
        time.sleep(0.1)
