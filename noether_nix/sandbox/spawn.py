"""Start sandbox processes from one long-lived thread.

bwrap's ``--die-with-parent`` is ``PR_SET_PDEATHSIG``, and Linux delivers
that signal when the *thread* that forked the child exits, not the process.
``trio.lowlevel.open_process`` forks in a trio worker thread, and trio ends
idle worker threads after about ten seconds: every sandbox started that way
was SIGKILLed ten seconds later on a quiet daemon. Here every fork happens
in one dedicated thread that lives as long as the daemon, so the death
signal means what it should: the sandbox dies with the daemon, and only
then. The child is waited for through a pidfd, so nothing blocks trio.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import subprocess
from collections.abc import Callable
from typing import Any

import trio

# One worker, never idle-reaped: it is the parent thread of every sandbox.
_SPAWNER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="noether-spawner")


class Child:
    """A started process: trio streams for the pipes asked for, a pidfd to wait on."""

    def __init__(self, popen: subprocess.Popen[bytes], pidfd: int, stdin: trio.lowlevel.FdStream | None,
                 stdout: trio.lowlevel.FdStream | None, stderr: trio.lowlevel.FdStream | None) -> None:
        self._popen = popen
        self._pidfd: int | None = pidfd
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    async def wait(self) -> int:
        if self._popen.returncode is None and self._pidfd is not None:
            await trio.lowlevel.wait_readable(self._pidfd)
            self._popen.wait()
            self._close_pidfd()
        code = self._popen.returncode
        assert code is not None
        return code

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def send_signal(self, sig: int) -> None:
        # Only while it has not been reaped: afterwards the pid may be someone else's.
        if self._popen.returncode is None and self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, sig)

    def kill_group(self) -> None:
        """SIGKILL the process group it leads (it was started in a new session)."""
        if self._popen.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._popen.pid, signal.SIGKILL)

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    async def aclose(self) -> None:
        for stream in (self.stdin, self.stdout, self.stderr):
            if stream is not None:
                with contextlib.suppress(Exception):
                    await stream.aclose()
        if self._popen.returncode is None:
            self._popen.poll()
        if self._popen.returncode is not None:
            self._close_pidfd()


def _popen(argv: list[str], fds: tuple[int | None, int | None, int | None], options: dict[str, Any]
           ) -> tuple[subprocess.Popen[bytes], int]:
    popen = subprocess.Popen(argv, stdin=fds[0], stdout=fds[1], stderr=fds[2], **options)
    try:
        return popen, os.pidfd_open(popen.pid)
    except OSError:  # no pidfd, no way to wait: it must not run unsupervised
        popen.kill()
        popen.wait()
        raise


async def spawn(argv: list[str], *, stdin: int | None = subprocess.PIPE, stdout: int | None = subprocess.PIPE,
                stderr: Any = subprocess.PIPE, preexec_fn: Callable[[], None] | None = None,
                **options: Any) -> Child:
    """``subprocess.Popen(argv, …)`` in the spawner thread; PIPE ends become trio streams.

    ``stderr`` may also be a file object (its fd is used). Raises OSError when
    the program cannot be started, like Popen.
    """
    ours: list[int] = []  # our ends of the pipes, closed if the start fails
    theirs: list[int] = []  # the child's ends, always closed here once it started

    def pipe(child_reads: bool) -> tuple[int, int]:
        r, w = os.pipe()
        mine, child = (w, r) if child_reads else (r, w)
        ours.append(mine)
        theirs.append(child)
        return mine, child

    in_mine = out_mine = err_mine = None
    child_fds: list[int | None] = [stdin, stdout, None]
    if stdin == subprocess.PIPE:
        in_mine, child_fds[0] = pipe(child_reads=True)
    if stdout == subprocess.PIPE:
        out_mine, child_fds[1] = pipe(child_reads=False)
    if stderr == subprocess.PIPE:
        err_mine, child_fds[2] = pipe(child_reads=False)
    elif hasattr(stderr, "fileno"):
        child_fds[2] = stderr.fileno()
    else:
        child_fds[2] = stderr
    try:
        # Cancelled already? Then start nothing. Once submitted, the fork is
        # waited for even if cancelled meanwhile: a started child must be
        # recorded (and so killed), and its fds must outlive the fork.
        await trio.lowlevel.checkpoint_if_cancelled()
        future = _SPAWNER.submit(_popen, argv, (child_fds[0], child_fds[1], child_fds[2]),
                                 {**options, "preexec_fn": preexec_fn})
        with trio.CancelScope(shield=True):
            popen, pidfd = await trio.to_thread.run_sync(future.result)
    except BaseException:
        for fd in ours:
            os.close(fd)
        raise
    finally:
        for fd in theirs:
            os.close(fd)
    return Child(popen, pidfd,
                 trio.lowlevel.FdStream(in_mine) if in_mine is not None else None,
                 trio.lowlevel.FdStream(out_mine) if out_mine is not None else None,
                 trio.lowlevel.FdStream(err_mine) if err_mine is not None else None)
