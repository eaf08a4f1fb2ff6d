"""kill_process: {pid} -> {killed}: sends SIGKILL. pid must be positive (never a group)."""

import os
import signal
from typing import Any


class StageError(Exception):
    pass


def execute(input: Any) -> Any:
    pid = input.get("pid") if isinstance(input, dict) else None
    if isinstance(pid, bool) or not isinstance(pid, (int, float)) or pid != int(pid) or pid <= 0:
        raise StageError("input must be a record with a positive whole number 'pid'")
    try:
        os.kill(int(pid), signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return {"killed": False}
    return {"killed": True}
