"""Child processes that die with us.

Every process started here is forked by one long-lived thread, the spawner.
bwrap's ``--die-with-parent`` and our own ``PR_SET_PDEATHSIG`` for other
children are delivered when the *thread* that forked the child exits, not
the process: ``trio.lowlevel.open_process`` forks in a trio worker thread,
and trio ends idle worker threads after about ten seconds, so every child
started that way was SIGKILLed ten seconds later on a quiet daemon. Forked
from a thread that lives as long as the daemon, the death signal means what
it should: the child dies with the daemon (even ``kill -9``), and only then.

* ``spawn`` (async): a sandbox's process, waited for through a pidfd so
  nothing blocks trio.
* ``supervised`` (sync, for code in worker threads, e.g. ``nix-build``): the
  child gets ``PR_SET_PDEATHSIG(SIGKILL)`` and a session of its own; when the
  trio task it works for is cancelled (``run_sync_killable``) its whole
  process group is SIGKILLed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import ctypes
import functools
import math
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from noether_nix.deferred import PerRun, trio
from noether_nix.errors import NoetherError

T = TypeVar("T")

# One worker, never idle-reaped: it is the parent thread of every child we start.
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
        if code is None:  # closed (``aclose``) while it still ran: nothing to wait on any more
            raise RuntimeError(f"process {self._popen.pid} was closed before it exited")
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
        # Closed also when it has not exited (a bounded wait ran out): nothing signals it through
        # this object any more, and keeping the fd would leak one per such run.
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


# ---------------------------------------------------------------- children of worker threads

_PR_SET_PDEATHSIG = 1
# Loaded now: the child must not load libraries between fork and exec.
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent(parent: int) -> None:
    """In the child, before exec: SIGKILL when the spawner thread (so the daemon) dies."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os.kill(os.getpid(), signal.SIGKILL)


class KillSwitch:
    """The process groups started (through ``supervised``) on behalf of one trio
    task; firing it SIGKILLs them, and refuses any later start."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[subprocess.Popen[Any]] = set()
        self.fired = False

    def fire(self) -> None:
        with self._lock:
            self.fired = True
            live = list(self._live)
        for p in live:
            kill_group(p)

    def _add(self, p: subprocess.Popen[Any]) -> bool:
        with self._lock:
            if not self.fired:
                self._live.add(p)
            return not self.fired

    def _discard(self, p: subprocess.Popen[Any]) -> None:
        with self._lock:
            self._live.discard(p)


_SWITCH: contextvars.ContextVar[KillSwitch | None] = contextvars.ContextVar("noether_kill_switch", default=None)


def kill_group(p: subprocess.Popen[Any]) -> None:
    """SIGKILL the process group ``p`` leads (it was started in a session of its own)."""
    if p.returncode is None:  # once reaped, its pid (and group id) may be someone else's
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)


def cancelled() -> bool:
    """Whether the trio task this worker thread runs for was cancelled."""
    switch = _SWITCH.get()
    return switch is not None and switch.fired


def _refuse_cancelled(argv: list[str]) -> NoetherError:
    return NoetherError("cancelled", f"{os.path.basename(argv[0])} was not started: its run was cancelled",
                        exit_code=3)


def _start(argv: list[str], options: dict[str, Any]) -> subprocess.Popen[Any]:
    return subprocess.Popen(argv, start_new_session=True,
                            preexec_fn=functools.partial(_die_with_parent, os.getpid()), **options)


@contextlib.contextmanager
def supervised(argv: list[str], **options: Any) -> Iterator[subprocess.Popen[Any]]:
    """``subprocess.Popen(argv, **options)`` for synchronous code, started so that it
    cannot outlive us: forked by the spawner thread, in a session of its own,
    SIGKILLed by the kernel if this process dies; its group SIGKILLed if the
    trio task it works for is cancelled, or if the block is left while it runs."""
    switch = _SWITCH.get()
    if switch is not None and switch.fired:
        raise _refuse_cancelled(argv)
    p = _SPAWNER.submit(_start, argv, options).result()
    try:
        if switch is not None and not switch._add(p):
            raise _refuse_cancelled(argv)
        yield p
    finally:
        if p.poll() is None:
            kill_group(p)
            p.wait()
        if switch is not None:
            switch._discard(p)


def run(argv: list[str], *, timeout: float, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """``subprocess.run(argv, capture_output=True, timeout=…)`` through ``supervised``:
    on timeout the whole group is killed before ``TimeoutExpired`` is raised."""
    with supervised(argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE) as p:
        try:
            out, err = p.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(p)
            p.wait()
            raise
    if cancelled():
        raise NoetherError("cancelled", f"{os.path.basename(argv[0])} was stopped: its run was cancelled",
                           exit_code=3)
    return subprocess.CompletedProcess(argv, p.returncode, out, err)


_UNLIMITED = PerRun("noether_unlimited_threads", lambda: trio.CapacityLimiter(math.inf))


async def run_sync_killable(fn: Callable[..., T], *args: Any, limiter: trio.CapacityLimiter | None = None) -> T:
    """``fn(*args)`` in a worker thread, as ``trio.to_thread.run_sync``, except that
    cancelling the caller is not ignored until ``fn`` returns: every process
    ``fn`` started through ``supervised``/``run`` is SIGKILLed (its group), the
    thread, left with nothing to wait for, is waited for, and the cancellation
    goes on. ``limiter`` bounds such threads; waiting for it is cancellable."""
    unlimited = _UNLIMITED.get()
    switch = KillSwitch()
    result: list[tuple[bool, Any]] = []  # (returned, value or exception), once the thread is done

    def call() -> tuple[bool, Any]:
        try:
            return True, fn(*args)
        except BaseException as e:  # handed back to the task
            return False, e

    token = _SWITCH.set(switch)  # the worker thread runs in a copy of this context
    try:
        async with limiter if limiter is not None else contextlib.nullcontext(), trio.open_nursery() as nursery:

            async def in_thread() -> None:
                with trio.CancelScope(shield=True):  # the thread cannot be abandoned, only emptied
                    result.append(await trio.to_thread.run_sync(call, limiter=unlimited))
                nursery.cancel_scope.cancel()

            nursery.start_soon(in_thread)
            try:
                await trio.sleep_forever()
            finally:
                if not result:  # cancelled while the thread works: empty it
                    switch.fire()
    finally:
        _SWITCH.reset(token)
    returned, value = result[0]
    if not returned:
        raise value
    return value
