"""``run_blocking``: a sandboxed run without trio (``sandbox.blocking``).

The escape suite runs on it too (the ``blocking`` path in conftest); here
what only a blocking call has: an interrupt (Ctrl-C) in the calling thread,
no trio loaded, and the same Results as the trio supervisor."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio

from noether_nix.model.effects import EffectSet
from noether_nix.sandbox.blocking import run_blocking
from noether_nix.sandbox.policy import Limits, policy_from_effects
from noether_nix.sandbox.profile import load_profile
from noether_nix.sandbox.supervisor import Isolation, Result, Status, run_sandboxed
from tests.processes import marked_sandbox_pids, running, sandbox_cgroups

REPO = Path(__file__).resolve().parents[2]


def test_importing_it_loads_no_trio() -> None:
    # A fresh interpreter: this test process has trio loaded already.
    subprocess.run([sys.executable, "-c", "import noether_nix.sandbox.blocking, sys; "
                    "assert 'trio' not in sys.modules, sorted(m for m in sys.modules if 'trio' in m)"],
                   cwd=REPO, check=True, timeout=60)


#: Run in a child Python: a one-shot run of a hostile probe (a SIGTERM-ignoring
#: double-fork daemon in a session of its own) that the test interrupts with
#: SIGINT. The child, still alive (so no death-with-parent helps), reports what
#: of its sandbox is left once ``run_blocking`` has raised.
INTERRUPTED = r"""
import json, sys
from noether_nix.model.effects import EffectSet
from noether_nix.sandbox.blocking import run_blocking
from noether_nix.sandbox.launch import Isolation
from noether_nix.sandbox.policy import Limits, policy_from_effects
from noether_nix.sandbox.profile import load_profile
from tests.processes import marked_sandbox_pids, sandbox_cgroups

python, marker = sys.argv[1], sys.argv[2]
code = f'''# {marker}
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        while True: time.sleep(0.1)
    os._exit(0)
while True: time.sleep(0.1)
'''
profile = load_profile()
try:
    run_blocking([python, "-c", code], policy=policy_from_effects(EffectSet.pure(), profile=profile),
                 limits=Limits(timeout_s=60), stdin=b"", isolation=Isolation("bwrap"), profile=profile)
    print(json.dumps({"interrupted": False}))
except KeyboardInterrupt:
    print(json.dumps({"interrupted": True, "left": marked_sandbox_pids(marker),
                      "cgroups": [str(d) for d in sandbox_cgroups()]}))
"""


def test_an_interrupt_kills_the_tree_and_removes_the_cgroup(python_runtime: str) -> None:
    marker = f"noether-probe-{uuid.uuid4().hex}"
    child = subprocess.Popen([sys.executable, "-c", INTERRUPTED, python_runtime, marker], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 60
        seen: list[int] = []
        while len(seen) < 2 and time.monotonic() < deadline and child.poll() is None:
            seen = marked_sandbox_pids(marker, creator=child.pid)  # the probe and its daemon
            time.sleep(0.05)
        assert len(seen) >= 2, f"the probe did not start: {child.poll()} {child.stderr.read() if child.poll() else ''}"
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err.decode()
    report = json.loads(out)
    assert report == {"interrupted": True, "left": [], "cgroups": []}, report
    assert [pid for pid in seen if running(pid)] == []
    assert sandbox_cgroups(creator=child.pid) == {}


#: A second Ctrl-C that comes while the sandbox is being torn down (sent from inside the
#: teardown here, so it lands there for sure): the teardown finishes first, then it is raised.
SECOND_INTERRUPT = r"""
import json, os, signal, sys, time
from noether_nix.model.effects import EffectSet
from noether_nix.sandbox import launch as launch_module
from noether_nix.sandbox.blocking import run_blocking
from noether_nix.sandbox.launch import Isolation
from noether_nix.sandbox.policy import Limits, policy_from_effects
from noether_nix.sandbox.profile import load_profile
from tests.processes import sandbox_cgroups

finished = []
close = launch_module.Launch.close_blocking

def interrupted_close(self):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.2)  # an unheld SIGINT would have raised by now, cutting the teardown short
    close(self)
    finished.append(True)

launch_module.Launch.close_blocking = interrupted_close
profile = load_profile()
try:
    run_blocking([sys.argv[1], "-c", "print(1)"], policy=policy_from_effects(EffectSet.pure(), profile=profile),
                 limits=Limits(timeout_s=30), stdin=b"", isolation=Isolation("bwrap"), profile=profile)
    print(json.dumps({"interrupted": False}))
except KeyboardInterrupt:
    print(json.dumps({"interrupted": True, "teardown_finished": finished == [True],
                      "cgroups": [str(d) for d in sandbox_cgroups()]}))
"""


def test_a_second_interrupt_waits_for_the_teardown(python_runtime: str) -> None:
    done = subprocess.run([sys.executable, "-c", SECOND_INTERRUPT, python_runtime], cwd=REPO, capture_output=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout) == {"interrupted": True, "teardown_finished": True, "cgroups": []}


PURE_CODE = "import json, sys\n"


def _how(**limits: Any) -> dict[str, Any]:
    profile = load_profile()
    return {"policy": policy_from_effects(EffectSet.pure(), profile=profile), "profile": profile,
            "limits": Limits(**{"timeout_s": 10, **limits})}


async def _both(argv: list[str], stdin: bytes = b"", isolation: str = "bwrap", expect_json: bool = True,
                **limits: Any) -> tuple[Result, Result]:
    how = {**_how(**limits), "stdin": stdin, "isolation": Isolation(isolation), "expect_json": expect_json}
    cold = await run_sandboxed(argv, **how)
    blocking = await trio.to_thread.run_sync(functools.partial(run_blocking, argv, **how))
    return cold, blocking


def _same(cold: Result, blocking: Result) -> None:
    fields = ("status", "message", "exit_code", "signal", "output", "stdout_bytes", "stderr_tail", "isolation")
    assert {f: getattr(blocking, f) for f in fields} == {f: getattr(cold, f) for f in fields}


@pytest.mark.parametrize("isolation", ["bwrap", "none"])
async def test_a_program_that_cannot_start_is_spawn_failed(isolation: str) -> None:
    cold, blocking = await _both(["/nonexistent/noether-program"], isolation=isolation)
    assert blocking.status is Status.SPAWN_FAILED and blocking.exit_code == 127
    assert "noether-program" in blocking.message
    _same(cold, blocking)


async def test_stdin_larger_than_the_pipe_buffer_is_fed_whole(python_runtime: str) -> None:
    data = os.urandom(1024 * 1024)
    code = "import sys\nsys.stdout.buffer.write(sys.stdin.buffer.read())"
    how = {**_how(), "stdin": data, "isolation": Isolation("bwrap"), "expect_json": False}
    r = await trio.to_thread.run_sync(functools.partial(run_blocking, [python_runtime, "-c", code], **how))
    assert r.status is Status.OK, r.message
    assert r.stdout_bytes == data


async def test_a_program_that_reads_no_stdin_is_not_an_error(python_runtime: str) -> None:
    how = {**_how(), "stdin": b"x" * (4 * 1024 * 1024), "isolation": Isolation("bwrap")}
    r = await trio.to_thread.run_sync(functools.partial(run_blocking, [python_runtime, "-c", "print(1)"], **how))
    assert r.status is Status.OK and r.output == 1


PARITY = {
    "ok": (PURE_CODE + "print(json.dumps({'echo': json.load(sys.stdin)}))", {}),
    "error": (PURE_CODE + "def f():\n    raise ValueError('bad input')\nf()", {}),
    "timeout": ("while True: pass", {"timeout_s": 1}),
    "output_cap": ("import sys\nwhile True: sys.stdout.write('x' * 65536)", {"max_output_bytes": 1024 * 1024}),
    "protocol": ("print('hello'); print('world')", {}),
}


@pytest.mark.parametrize("name", sorted(PARITY))
async def test_the_same_probe_gives_the_same_result_as_the_trio_supervisor(python_runtime: str, name: str) -> None:
    code, limits = PARITY[name]
    cold, blocking = await _both([python_runtime, "-c", code], stdin=b'{"a": [1, 2]}', **limits)
    assert blocking.status.value == {"output_cap": "output_limit", "protocol": "protocol_error",
                                     "timeout": "timed_out"}.get(name, name)
    _same(cold, blocking)
    if name == "error":
        assert "Traceback" in blocking.stderr_tail and "ValueError: bad input" in blocking.stderr_tail
