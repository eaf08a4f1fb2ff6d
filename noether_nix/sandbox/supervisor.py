"""Run one program in a sandbox, bounded, and report one Result.

The supervisor reads stdout with a running byte count (killing the run when
it passes the cap, so its own memory stays bounded), keeps only the tail of
stderr, enforces the wall-clock timeout, and on any exit path — timeout,
cap, cancellation — kills the whole tree: SIGKILL to bwrap tears down its
PID namespace (``--unshare-pid`` + ``--die-with-parent``), and the run's
cgroup is swept as a second wall.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from noether_nix.deferred import trio
from noether_nix.sandbox.identity import RunAs
from noether_nix.sandbox.launch import (
    Isolation,
    Launch,
    prepare_launch,
    require_bwrap,
    start_failure,
)
from noether_nix.sandbox.outcome import CgroupEvents, Exchange, Result, Status, verdict
from noether_nix.sandbox.policy import IsolationPolicy, Limits
from noether_nix.sandbox.profile import Profile, load_profile
from noether_nix.sandbox.spawn import spawn

# Status, Result, Exchange, CgroupEvents and verdict live in ``outcome`` (no trio); re-exported.
__all__ = ["CgroupEvents", "Exchange", "Isolation", "Result", "RunAs", "Status", "exchange", "require_bwrap",
           "run_sandboxed", "verdict"]


async def run_sandboxed(
    argv: list[str],
    *,
    policy: IsolationPolicy,
    limits: Limits,
    stdin: bytes,
    isolation: Isolation,
    expect_json: bool = True,
    profile: Profile | None = None,
    env: dict[str, str] | None = None,
    run_as: RunAs | None = None,
    cgroup_root: Path | None = None,
) -> Result:
    """Run ``argv`` once in a sandbox and report one Result.

    ``run_as`` is the peer a root daemon runs this for; started by root for
    root, the sandbox runs as a dedicated sandbox user (``identity``).
    ``cgroup_root`` is where cgroupfs is mounted (default /sys/fs/cgroup)."""
    profile = profile or load_profile("default")
    launch = prepare_launch(argv, policy=policy, limits=limits, isolation=isolation, profile=profile, env=env,
                            run_as=run_as, cgroup_root=cgroup_root)
    started = time.monotonic()
    try:
        return await _supervise(launch, stdin, limits, expect_json, started)
    finally:
        await launch.aclose()


async def _supervise(launch: Launch, stdin: bytes, limits: Limits, expect_json: bool, started: float) -> Result:
    import subprocess

    argv, cgroup, mode = launch.argv, launch.cgroup, launch.mode
    try:
        proc = await spawn(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=launch.env,
            pass_fds=tuple(launch.fds),
            start_new_session=True,
            preexec_fn=launch.preexec(limits),
            cwd="/",
        )
    except (OSError, subprocess.SubprocessError) as e:  # a failing preexec_fn is a SubprocessError
        return Result(status=Status.SPAWN_FAILED, isolation=mode, exit_code=127,
                      message=start_failure(argv[0], e))
    finally:
        launch.close_fds()
    assert proc.stdin and proc.stdout and proc.stderr

    def kill_tree() -> None:
        proc.kill_group()
        proc.kill()
        if cgroup is not None:
            cgroup.kill()

    async def wait() -> None:
        await proc.wait()

    try:
        ex = await exchange(proc.stdin, proc.stdout, proc.stderr, stdin, limits, wait=wait, kill_tree=kill_tree,
                            exited=lambda: proc.returncode is not None)
    finally:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(5):
                await proc.wait()
            await proc.aclose()
    return launch.verdict(ex, proc.returncode, limits=limits, expect_json=expect_json, started=started)


async def exchange(stdin_stream: Any, stdout_stream: Any, stderr_stream: Any, stdin: bytes, limits: Limits, *,
                   wait: Callable[[], Awaitable[None]], kill_tree: Callable[[], None],
                   exited: Callable[[], bool]) -> Exchange:
    """Feed ``stdin`` (unless ``stdin_stream`` is None: it was written ahead and closed),
    read stdout with a running byte count (killing the tree past
    the cap, so our memory stays bounded) and keep stderr's tail, until ``wait``
    returns, within the timeout. On any way out but a clean exit (timeout,
    cap, cancellation) the tree is killed; the caller still waits for it."""
    stdout = bytearray()
    stderr_tail = bytearray()
    stopped: Status | None = None

    async def feed() -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stdin_stream.send_all(stdin)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stdin_stream.aclose()

    async def read_stdout() -> None:
        nonlocal stopped
        while chunk := await stdout_stream.receive_some(65536):
            if len(stdout) + len(chunk) > limits.max_output_bytes:
                stopped = stopped or Status.OUTPUT_LIMIT
                kill_tree()
                return
            stdout.extend(chunk)

    async def read_stderr() -> None:
        while chunk := await stderr_stream.receive_some(65536):
            stderr_tail.extend(chunk)
            if len(stderr_tail) > limits.max_stderr_bytes:
                del stderr_tail[: len(stderr_tail) - limits.max_stderr_bytes]

    cancelled = False
    try:
        with trio.move_on_after(limits.timeout_s) as timeout_scope:
            async with trio.open_nursery() as nursery:
                if stdin_stream is not None:
                    nursery.start_soon(feed)
                nursery.start_soon(read_stdout)
                nursery.start_soon(read_stderr)
                await wait()
        if timeout_scope.cancelled_caught:
            stopped = Status.TIMED_OUT
    except trio.Cancelled:
        cancelled = True
        raise
    finally:
        if not exited() or stopped is not None or cancelled:
            kill_tree()
    return Exchange(bytes(stdout), stderr_tail.decode("utf-8", "replace"), stopped)
