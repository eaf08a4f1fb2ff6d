"""The process host: one sandbox per run that owns the processes the run's
spawn_process / wait_process / signal_process / kill_process stages handle.

Every stage runs in its own sandbox whose processes die with it, so the
process stages of a run share this long-lived one instead. It reads one JSON
request per line on stdin, ``{"op": <stage name>, "input": <stage input>, "id": n}``,
and answers one JSON line, ``{"ok": <output>}`` or ``{"error": <sentence>}``,
with the request's ``id``.
Only pids it spawned can be waited for or signalled: the sandbox's own
processes (bwrap's init, this host) are out of reach. When stdin closes (the
run ended), every process it spawned is killed; the PID namespace dies with
the sandbox in any case.
"""

import json
import os
import signal as signals
import subprocess
import sys
import time
from typing import Any

children: dict[int, subprocess.Popen[bytes]] = {}


class StageError(Exception):
    pass


def _pid(input: Any) -> int:
    pid = input.get("pid") if isinstance(input, dict) else None
    if isinstance(pid, bool) or not isinstance(pid, (int, float)) or pid != int(pid) or pid <= 0:
        raise StageError("input must be a record with a positive whole number 'pid'")
    if int(pid) not in children:
        raise StageError(f"pid {int(pid)} was not spawned by this run")
    return int(pid)


def _text_list(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise StageError(f"field '{what}' must be a list of text, or null")
    return value


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


def spawn_process(input: Any) -> Any:
    if not isinstance(input, dict) or not isinstance(input.get("cmd"), str) or not input["cmd"]:
        raise StageError("input must be a record with a non-empty text field 'cmd'")
    args = _text_list(input.get("args"), "args")
    cwd = input.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        raise StageError("field 'cwd' must be text or null")
    env = input.get("env")
    if env is not None and (not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values())):
        raise StageError("field 'env' must be a map of text to text, or null")
    try:
        child = subprocess.Popen(
            [input["cmd"], *args], cwd=cwd, env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        where = f" (or the directory {cwd})" if cwd else ""
        raise StageError(f"cannot spawn {input['cmd']}: no such program in the sandbox{where}") from None
    except PermissionError:
        raise StageError(f"cannot spawn {input['cmd']}: permission denied") from None
    except OSError as e:
        raise StageError(f"cannot spawn {input['cmd']}: {e.strerror}") from None
    children[child.pid] = child
    return {"pid": child.pid, "started_at": int(time.time())}


def wait_process(input: Any) -> Any:
    child = children[_pid(input)]
    timeout_ms = input.get("timeout_ms")
    if timeout_ms is None:
        timeout_ms = 30_000
    if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, (int, float)) or timeout_ms < 0:
        raise StageError("field 'timeout_ms' must be a non-negative number or null")
    try:
        child.wait(timeout=timeout_ms / 1000)
    except subprocess.TimeoutExpired:
        return {"exited": False, "timed_out": True}
    return {"exited": True, "timed_out": False}


def signal_process(input: Any) -> Any:
    child = children[_pid(input)]
    sig = _signal(input.get("signal"))
    if child.poll() is not None:
        return {"sent": False}  # already exited (and reaped): nothing to deliver to
    child.send_signal(sig)
    return {"sent": True}


def kill_process(input: Any) -> Any:
    child = children[_pid(input)]
    if child.poll() is not None:
        return {"killed": False}
    child.kill()
    return {"killed": True}


OPS = {f.__name__: f for f in (spawn_process, wait_process, signal_process, kill_process)}


def main() -> None:
    for line in sys.stdin:
        request: Any = None
        try:
            request = json.loads(line)
            answer = {"ok": OPS[request["op"]](request["input"])}
        except StageError as e:
            answer = {"error": str(e)}
        except Exception as e:  # a bug here must not end the run's other process stages
            answer = {"error": f"{type(e).__name__}: {e}"}
        answer["id"] = request.get("id") if isinstance(request, dict) else None
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    for child in children.values():
        if child.poll() is None:
            child.kill()


if __name__ == "__main__":
    main()
