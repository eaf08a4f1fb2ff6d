"""Run one program in a sandbox from plain synchronous code: ``supervisor``
without trio.

A one-shot ``noether run`` whose plan needs no concurrency (a chain of
stages) should not pay for loading an event loop (trio alone costs ~50 ms).
``run_blocking`` keeps ``supervisor.run_sandboxed``'s contract and guarantees:
the same launch (``prepare_launch``), the same running stdout cap, stderr
tail and wall-clock timeout, the same ``verdict``; one ``select.poll`` loop
over the pipes and a pidfd does the waiting (no sleeps, no polling
intervals). On every way out (timeout, cap, an exception, KeyboardInterrupt)
the tree is SIGKILLed (process group, pidfd, ``cgroup.kill``), the child
reaped (bounded), the cgroup drained and removed and the uid given back;
then the exception goes on.

Death with the parent: bwrap's ``--die-with-parent`` (``PR_SET_PDEATHSIG``)
fires when the *thread* that forked it exits, and the child is forked by the
calling thread (``proc`` forks daemon children from one long-lived spawner
thread for this reason). The one-shot CLI calls this from its main thread,
which lives as long as the process; a caller in a short-lived worker thread
must keep that thread alive until the call returns (which it does: the call
blocks until the sandbox is gone).

This module must not import trio, directly or indirectly
(``tests/sandbox/test_blocking.py`` checks).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from noether_nix.sandbox.cgroups import RunCgroup
from noether_nix.sandbox.identity import RunAs
from noether_nix.sandbox.launch import Isolation, Launch, prepare_launch, start_failure
from noether_nix.sandbox.outcome import Exchange, Result, Status
from noether_nix.sandbox.policy import IsolationPolicy, Limits
from noether_nix.sandbox.profile import Profile, load_profile

__all__ = ["run_blocking"]

#: How long the child is waited for once its tree was killed (as ``supervisor``).
REAP_TIMEOUT_S = 5.0
_CHUNK = 65536
_READ_EVENTS = select.POLLIN | select.POLLHUP | select.POLLERR
_WRITE_EVENTS = select.POLLOUT | select.POLLHUP | select.POLLERR


def run_blocking(
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
    """Run ``argv`` once in a sandbox and report one Result, blocking the calling
    thread (see the module doc); arguments as ``supervisor.run_sandboxed``."""
    profile = profile or load_profile("default")
    launch = prepare_launch(argv, policy=policy, limits=limits, isolation=isolation, profile=profile, env=env,
                            run_as=run_as, cgroup_root=cgroup_root)
    started = time.monotonic()
    try:
        return _supervise(launch, stdin, limits, expect_json, started)
    finally:
        with _interrupts_held():  # a second Ctrl-C waits until the sandbox is gone (bounded: the drain's 10 s)
            launch.close_blocking()


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """SIGINT held back (on the main thread, where Python handles it) until the block ends,
    then delivered: a teardown is never cut short half way."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _start(launch: Launch, limits: Limits, fds: tuple[int, int, int]) -> tuple[subprocess.Popen[bytes], int]:
    """Popen in this thread with ``supervisor``'s options, and a pidfd to wait on."""
    popen = subprocess.Popen(launch.argv, stdin=fds[0], stdout=fds[1], stderr=fds[2], env=launch.env,
                             pass_fds=tuple(launch.fds), start_new_session=True,
                             preexec_fn=launch.preexec(limits), cwd="/")
    try:
        return popen, os.pidfd_open(popen.pid)
    except BaseException:  # no pidfd (or an interrupt): no way to wait, so it must not run unsupervised
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.kill()
        popen.wait()
        raise


def _supervise(launch: Launch, stdin: bytes, limits: Limits, expect_json: bool, started: float) -> Result:
    argv, cgroup, mode = launch.argv, launch.cgroup, launch.mode
    ours: set[int] = set()  # our ends of the pipes and the pidfd: each closed exactly once, on every way out
    try:
        theirs: list[int] = []  # the child's ends: closed once it started (or failed to)
        try:
            ends = []
            for child_reads in (True, False, False):
                r, w = os.pipe()
                mine, child = (w, r) if child_reads else (r, w)
                ours.add(mine)
                theirs.append(child)
                ends.append(mine)
            try:
                popen, pidfd = _start(launch, limits, (theirs[0], theirs[1], theirs[2]))
            except (OSError, subprocess.SubprocessError) as e:  # a failing preexec_fn is a SubprocessError
                return Result(status=Status.SPAWN_FAILED, isolation=mode, exit_code=127,
                              message=start_failure(argv[0], e))
        finally:
            launch.close_fds()
            for fd in theirs:
                os.close(fd)
        ours.add(pidfd)
        ex = _exchange(popen, pidfd, ends[0], ends[1], ends[2], stdin, limits, cgroup, ours)
    finally:
        for fd in ours:
            os.close(fd)
    return launch.verdict(ex, popen.returncode, limits=limits, expect_json=expect_json, started=started)


def _exchange(popen: subprocess.Popen[bytes], pidfd: int, stdin_fd: int, stdout_fd: int, stderr_fd: int,
              stdin: bytes, limits: Limits, cgroup: RunCgroup | None, ours: set[int]) -> Exchange:
    """``supervisor.exchange`` as one poll loop, then the bounded wait for the child.
    Feed ``stdin`` (closing ``stdin_fd`` once done, and taking it out of ``ours``),
    read stdout with a running byte count (killing the tree past the cap) and
    keep stderr's tail, until the child has exited and both pipes are at their
    end, within the timeout. On any way out but a clean exit (timeout, cap, an
    exception) the tree is killed; the child is waited for in every case."""

    def kill_tree() -> None:
        if popen.returncode is None:  # once reaped, its pid (and group id) may be someone else's
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(popen.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        if cgroup is not None:
            cgroup.kill()

    stdout = bytearray()
    stderr_tail = bytearray()
    stopped: Status | None = None
    clean = False
    try:
        poller = select.poll()
        waiting = {stdout_fd, stderr_fd, pidfd, stdin_fd}  # the run ends when all four are done with

        def done_with(fd: int) -> None:
            with contextlib.suppress(KeyError):
                poller.unregister(fd)
            waiting.discard(fd)
            if fd == stdin_fd:  # the child reads EOF
                ours.discard(fd)
                os.close(fd)

        for fd in (stdin_fd, stdout_fd, stderr_fd):
            os.set_blocking(fd, False)
        poller.register(stdout_fd, _READ_EVENTS)
        poller.register(stderr_fd, _READ_EVENTS)
        poller.register(pidfd, select.POLLIN)  # readable once the child has exited
        view = memoryview(stdin)
        written = 0
        if len(view):
            poller.register(stdin_fd, _WRITE_EVENTS)
        else:
            done_with(stdin_fd)

        deadline = time.monotonic() + limits.timeout_s
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                stopped = Status.TIMED_OUT
                break
            for fd, _events in poller.poll(int(left * 1000) + 1):
                if fd == pidfd:
                    popen.wait()  # it has exited: this reaps it at once
                    done_with(fd)
                elif fd == stdin_fd:
                    try:
                        written += os.write(fd, view[written:written + _CHUNK * 16])
                    except BlockingIOError:
                        continue
                    except (BrokenPipeError, ConnectionResetError):  # it reads no more: as ``feed``, ignored
                        written = len(view)
                    if written >= len(view):
                        done_with(fd)
                else:
                    try:
                        chunk = os.read(fd, _CHUNK)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        done_with(fd)
                    elif fd == stderr_fd:
                        stderr_tail.extend(chunk)
                        if len(stderr_tail) > limits.max_stderr_bytes:
                            del stderr_tail[: len(stderr_tail) - limits.max_stderr_bytes]
                    elif len(stdout) + len(chunk) > limits.max_output_bytes:
                        stopped = stopped or Status.OUTPUT_LIMIT
                        kill_tree()
                        done_with(fd)
                    else:
                        stdout.extend(chunk)
        clean = True
    finally:
        try:
            if popen.returncode is None or stopped is not None or not clean:
                kill_tree()
        finally:
            _reap(popen, pidfd)
    return Exchange(bytes(stdout), stderr_tail.decode("utf-8", "replace"), stopped)


def _reap(popen: subprocess.Popen[bytes], pidfd: int) -> None:
    """Wait (at most ``REAP_TIMEOUT_S``) for the killed child, as ``supervisor`` does."""
    if popen.returncode is not None:
        return
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    if poller.poll(int(REAP_TIMEOUT_S * 1000)):
        popen.wait()
    else:
        popen.poll()
