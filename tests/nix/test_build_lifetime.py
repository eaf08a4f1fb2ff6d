"""Security finding 12: a build dies with the daemon that started it (even on
``kill -9``) and with the run or request it builds for (cancellation).

The builds are real ``nix-build`` runs, made slow by a Nix ``pre-build-hook``
(set through ``NIX_CONFIG``) that sleeps for derivations carrying this
test's marker: ``nix-build`` itself sits waiting on its hook, as it would on
a long builder.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import trio

from noether_nix.nix.programs import build_stage_program_async
from noether_nix.nix.registry import ProgramRegistry
from noether_nix.paths import db_path
from tests.server.test_daemon import start

HOOK_SLEEP_S = 60


class SlowBuild:
    def __init__(self, tmp_path: Path) -> None:
        self.marker = f"noether-slow-build-{uuid.uuid4().hex}"
        self.pidfile = tmp_path / "hook.pids"
        self.hook = tmp_path / "pre-build-hook"
        self.hook.write_text(
            "#!/bin/sh\n"
            f"if grep -q '{self.marker}' \"$1\"; then\n"
            f"  echo \"$$ $PPID\" > '{self.pidfile}.tmp' && mv '{self.pidfile}.tmp' '{self.pidfile}'\n"
            f"  exec sleep {HOOK_SLEEP_S}\n"
            "fi\n")
        self.hook.chmod(0o755)
        self.code = f"# {self.marker}\ndef execute(x):\n    return x\n"

    def pids(self) -> tuple[int, int] | None:
        """(the hook's pid, its parent: the nix-build) once the slow build is under way."""
        if not self.pidfile.exists():
            return None
        hook, build = map(int, self.pidfile.read_text().split())
        return hook, build


@pytest.fixture
def slow_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowBuild]:
    slow = SlowBuild(tmp_path)
    config = os.environ.get("NIX_CONFIG", "")
    monkeypatch.setenv("NIX_CONFIG", f"{config}\npre-build-hook = {slow.hook}\n".lstrip())
    yield slow
    found = slow.pids()
    if found is not None:  # whatever this test started and left, by pid
        for pid in found:
            with contextlib.suppress(psutil.NoSuchProcess):
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE:
                    p.kill()


def gone(pid: int, created: float, within: float) -> bool:
    """Whether the process ``pid`` (started at ``created``) ends within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            p = psutil.Process(pid)
            if p.create_time() != created or p.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def test_kill_9_of_the_daemon_during_stage_add_kills_its_nix_build(tmp_path: Path, slow_build: SlowBuild) -> None:
    daemon, sock = start(tmp_path)
    try:
        body = json.dumps({"spec": {"name": "slow_build", "input": "Text", "output": "Text",
                                    "implementation": slow_build.code}, "build": True}).encode()
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(sock))
        client.sendall(b"POST /v1/stages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n" % len(body) + body)
        deadline = time.monotonic() + 180  # a cold machine imports the python runtime first
        while (found := slow_build.pids()) is None:
            assert time.monotonic() < deadline, "the slow build never started"
            assert daemon.poll() is None, "the daemon died"
            time.sleep(0.1)
        hook_pid, build_pid = found
        build = psutil.Process(build_pid)
        # The nix-build is the daemon's own child (found through the daemon's process tree).
        assert build_pid in {c.pid for c in psutil.Process(daemon.pid).children()}
        assert os.path.basename(build.exe()).startswith("nix")
        build_created, hook_created = build.create_time(), psutil.Process(hook_pid).create_time()

        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        client.close()
        assert gone(build_pid, build_created, within=10), "nix-build outlived the daemon"
        assert gone(hook_pid, hook_created, within=10), "the build's own child outlived the daemon"
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)


async def test_cancelling_a_build_kills_it_at_once(slow_build: SlowBuild) -> None:
    registry = ProgramRegistry(db_path())
    stage_id = uuid.uuid4().hex * 2
    cancel = trio.CancelScope()
    built: list[object] = []

    async def build() -> None:
        with cancel:
            built.append(await build_stage_program_async(stage_id, "python", slow_build.code, registry=registry))

    with trio.fail_after(240):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(build)
            while (found := slow_build.pids()) is None:
                await trio.sleep(0.1)
            hook_pid, build_pid = found
            build_created = psutil.Process(build_pid).create_time()
            hook_created = psutil.Process(hook_pid).create_time()
            asked = time.monotonic()
            cancel.cancel()
    # Cancelling did not wait for the build (its hook sleeps a minute): it killed it.
    assert time.monotonic() - asked < HOOK_SLEEP_S / 2
    assert built == [] and cancel.cancelled_caught
    assert gone(build_pid, build_created, within=5) and gone(hook_pid, hook_created, within=5)
    assert registry.programs() == []  # nothing half-built was recorded
