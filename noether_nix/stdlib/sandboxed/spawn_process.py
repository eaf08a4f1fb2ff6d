"""spawn_process: {cmd, args?, cwd?, env?} -> {pid, started_at} (Unix seconds).

The process is started and not waited for; env adds to the inherited
environment. A reaper thread collects it if it exits while this program
still runs (as upstream), so it never lingers as a zombie.
"""

import subprocess
import threading
import time
from typing import Any


class StageError(Exception):
    pass


def _text_list(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise StageError(f"field '{what}' must be a list of text, or null")
    return value


def execute(input: Any) -> Any:
    if not isinstance(input, dict) or not isinstance(input.get("cmd"), str) or not input["cmd"]:
        raise StageError("input must be a record with a non-empty text field 'cmd'")
    args = _text_list(input.get("args"), "args")
    cwd = input.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        raise StageError("field 'cwd' must be text or null")
    env = input.get("env")
    if env is not None and (not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values())):
        raise StageError("field 'env' must be a map of text to text, or null")
    environment = None
    if env:
        import os

        environment = {**os.environ, **env}
    try:
        child = subprocess.Popen(
            [input["cmd"], *args], cwd=cwd, env=environment,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except FileNotFoundError:
        where = f" (or the directory {cwd})" if cwd else ""
        raise StageError(f"cannot spawn {input['cmd']}: no such program{where}") from None
    except PermissionError:
        raise StageError(f"cannot spawn {input['cmd']}: permission denied") from None
    except OSError as e:
        raise StageError(f"cannot spawn {input['cmd']}: {e.strerror}") from None
    threading.Thread(target=child.wait, daemon=True).start()
    return {"pid": child.pid, "started_at": int(time.time())}
