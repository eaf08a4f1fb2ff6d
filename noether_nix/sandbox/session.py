"""A sandboxed program kept running across several requests (JSON lines).

``run_sandboxed`` runs one program for one answer. A session is the same
sandbox (bwrap argv, seccomp filter, cgroup, rlimits) kept open: one JSON
request per line on its stdin, one JSON answer per line on its stdout, each
bounded in time and size. It holds no nursery, so any task may open it and
any task may close it: stderr goes to a temporary file instead of a pipe
that a background task would have to drain. Closing it (or any failed
request) kills the whole tree and removes its cgroup.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from typing import Any

from noether_nix.deferred import trio
from noether_nix.errors import NoetherError
from noether_nix.sandbox.identity import RunAs
from noether_nix.sandbox.launch import Isolation, Launch, prepare_launch, start_failure
from noether_nix.sandbox.policy import IsolationPolicy, Limits
from noether_nix.sandbox.profile import Profile
from noether_nix.sandbox.spawn import Child, spawn


class SessionError(NoetherError):
    def __init__(self, message: str) -> None:
        super().__init__("sandbox_session_failed", message, exit_code=3)


class SandboxSession:
    def __init__(self, proc: Child, launch: Launch, stderr: Any, limits: Limits,
                 isolation: str) -> None:
        self._proc = proc
        self._launch = launch
        self._cgroup = launch.cgroup
        self._stderr = stderr
        self._limits = limits
        self._buffer = bytearray()
        self._lock = trio.Lock()
        self._broken: str | None = None
        self._next_id = 0
        self._closed = False
        self.isolation = isolation

    def _stderr_tail(self) -> str:
        with contextlib.suppress(OSError):
            self._stderr.seek(max(0, os.fstat(self._stderr.fileno()).st_size - 2000))
            lines = self._stderr.read().decode("utf-8", "replace").strip().splitlines()
            return lines[-1] if lines else ""
        return ""

    async def request(self, message: dict[str, Any], *, timeout_s: float | None = None) -> Any:
        """Send one request and return its answer; requests take turns.

        Each request carries an ``id`` the program echoes: a request cancelled
        while its answer was still on the way (a ``race`` loser, a
        ``timeout``) leaves that answer to be read and dropped by the next
        request, never taken for its own."""
        async with self._lock:
            if self._broken:
                raise SessionError(self._broken)
            limit = timeout_s if timeout_s is not None else self._limits.timeout_s
            self._next_id += 1
            want = self._next_id
            try:
                with trio.fail_after(limit):
                    await self._proc.stdin.send_all(  # type: ignore[union-attr]
                        json.dumps({**message, "id": want}).encode() + b"\n")
                    while True:
                        line = await self._read_line()
                        try:
                            answer = json.loads(line)
                        except ValueError:
                            await self._fail("the sandboxed program answered something that is not JSON: "
                                             f"{line[:200]!r}")
                        if not isinstance(answer, dict) or not isinstance(answer.get("id"), int):
                            await self._fail(f"the sandboxed program answered without an id: {line[:200]!r}")
                        if answer["id"] == want:
                            return answer
                        # an answer to an earlier, cancelled request: drop it
            except trio.TooSlowError:
                await self._fail(f"no answer within {limit:g}s; the sandbox was killed")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self._fail("the sandboxed program is gone")

    async def _read_line(self) -> bytes:
        while b"\n" not in self._buffer:
            chunk = await self._proc.stdout.receive_some(65536)  # type: ignore[union-attr]
            if not chunk:
                tail = self._stderr_tail()
                await self._fail("the sandboxed program exited" + (f": {tail}" if tail else ""))
            self._buffer.extend(chunk)
            if len(self._buffer) > self._limits.max_output_bytes:
                await self._fail(f"an answer passed the {self._limits.max_output_bytes}-byte cap")
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return line

    async def _fail(self, why: str) -> Any:
        self._broken = why
        with trio.CancelScope(shield=True):
            await self.aclose()
        raise SessionError(why)

    async def aclose(self) -> None:
        """Close stdin (the program's cue to clean up), then kill the tree. Idempotent."""
        if self._closed:
            return
        self._closed = True
        proc = self._proc
        with trio.CancelScope(shield=True):
            with contextlib.suppress(Exception):
                await proc.stdin.aclose()  # type: ignore[union-attr]
            with trio.move_on_after(1):
                await proc.wait()
            proc.kill_group()  # no-ops once reaped: a reused pid is never signalled
            proc.kill()
            if self._cgroup is not None:
                self._cgroup.kill()
            with trio.move_on_after(5):
                await proc.wait()
            await proc.aclose()
            await self._launch.aclose()  # its processes are gone, the cgroup goes, then the uid is given back
            self._stderr.close()


async def open_session(argv: list[str], *, policy: IsolationPolicy, limits: Limits, isolation: Isolation,
                       profile: Profile, env: dict[str, str] | None = None,
                       run_as: RunAs | None = None) -> SandboxSession:
    """Start ``argv`` in a sandbox built like ``run_sandboxed``'s; the caller closes it."""
    launch = prepare_launch(argv, policy=policy, limits=limits, isolation=isolation, profile=profile, env=env,
                            run_as=run_as)
    try:
        stderr = tempfile.TemporaryFile(prefix="noether-session-")  # noqa: SIM115 (the session closes it)
    except BaseException:
        launch.finish()
        raise
    try:
        proc = await spawn(
            launch.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=launch.env,
            pass_fds=tuple(launch.fds), start_new_session=True, preexec_fn=launch.preexec(limits), cwd="/")
    except BaseException as e:  # cancelled, or could not start (a failing preexec_fn is a SubprocessError)
        stderr.close()
        launch.finish()
        if isinstance(e, (OSError, subprocess.SubprocessError)):
            raise SessionError(start_failure(launch.argv[0], e)) from None
        raise
    finally:
        launch.close_fds()
    return SandboxSession(proc, launch, stderr, limits, isolation.mode)
