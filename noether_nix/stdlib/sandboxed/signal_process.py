"""signal_process: {pid, signal?} -> {sent}; TERM by default.

signal is a name with or without SIG (TERM, SIGHUP) or a number. pid must
be positive: 0 and negative pids would signal whole process groups.
"""

import os
import signal as signals
from typing import Any


class StageError(Exception):
    pass


def _pid(input: Any) -> int:
    pid = input.get("pid") if isinstance(input, dict) else None
    if isinstance(pid, bool) or not isinstance(pid, (int, float)) or pid != int(pid) or pid <= 0:
        raise StageError("input must be a record with a positive whole number 'pid'")
    return int(pid)


def _signal(name: Any) -> signals.Signals:
    if name is None:
        return signals.SIGTERM
    if not isinstance(name, str):
        raise StageError("field 'signal' must be text or null")
    if name.isdigit():
        try:
            return signals.Signals(int(name))
        except ValueError:
            raise StageError(f"{name} is not a signal number") from None
    full = name.upper() if name.upper().startswith("SIG") else "SIG" + name.upper()
    try:
        return signals.Signals[full]
    except KeyError:
        raise StageError(f"{name!r} is not a signal name (e.g. TERM, HUP, INT, KILL)") from None


def execute(input: Any) -> Any:
    pid = _pid(input)
    sig = _signal(input.get("signal"))
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return {"sent": False}
    return {"sent": True}
