"""Warm sandboxes: a sandboxed interpreter kept running per (program, policy,
limits, environment, peer), forking one fresh child per call.

A cold run starts bwrap, the namespaces and an interpreter for every call
(tens of milliseconds). A ``WarmSandbox`` is that same sandbox — the same
bwrap argv (binds by fd, read-only root, /proc and /dev), cgroup, rlimits,
host identity and Landlock domain, planned by ``launch.prepare_launch`` —
running the warm host (``sandboxed/warm_host.py``) instead of the program.
Each call runs in a child forked from the host that gets fresh mount and
IPC namespaces with empty tmpfs on /tmp, /dev/shm and /work, a Landlock
domain of its own, no capabilities and the cold sandbox's full seccomp
filter, and then runs the program from its top; when it exits every
process of the call is killed and reaped before the next call may start.
The host forks (and so isolates) each call's child ahead, as soon as the
call before has ended: a call costs the hand-over and the program. The
design and what it guarantees: docs/security.md, "Warm sandboxes".

Per call: the timeout and the output caps are enforced here, as for a cold
run (``supervisor.exchange``); a call that times out, passes a cap, is
cancelled or leaves its host in doubt kills the whole warm sandbox. Memory
and process caps are the sandbox's cgroup's, so a call shares them with
its host (a few MiB); OOM kills and pids.max hits are counted per call.

``WarmPool`` bounds them: at most ``max_sandboxes`` at once (the least
recently used idle one makes room), idle ones expire after ``idle_s``
(``serve`` runs the expiry), a sandbox is retired after ``max_calls``
calls, and one that cannot start makes its key go cold from then on. The
cold path stays: ``run`` returns None whenever a call cannot go warm.
"""

from __future__ import annotations

import array
import contextlib
import functools
import json
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from noether_nix.deferred import trio
from noether_nix.errors import NoetherError
from noether_nix.logs import get_logger
from noether_nix.sandbox.bwrap import find_bwrap
from noether_nix.sandbox.identity import RunAs
from noether_nix.sandbox.launch import (
    Isolation,
    Launch,
    landlock_scoped,
    prepare_launch,
    seccomp_program,
    start_failure,
    unix_sockets_denied,
)
from noether_nix.sandbox.policy import IsolationPolicy, Limits
from noether_nix.sandbox.profile import Profile
from noether_nix.sandbox.seccomp import filter_fd
from noether_nix.sandbox.spawn import Child, spawn
from noether_nix.sandbox.supervisor import Result, Status, exchange, verdict

log = get_logger("noether.sandbox")

#: How long a warm host may take to say it is ready.
START_TIMEOUT_S = 30.0
#: Limits that are the sandbox's own (set when it starts); the others are per call.
LAUNCH_LIMITS = ("memory_bytes", "max_pids", "max_open_files", "max_file_size_bytes", "tmpfs_size_bytes")


@functools.cache
def host_source() -> str:
    return Path(__file__).with_name("sandboxed").joinpath("warm_host.py").read_text("utf-8")


@functools.lru_cache(maxsize=1024)
def _shebang(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            first = f.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    parts = first[2:].decode("utf-8", "replace").split()
    return parts[0] if len(parts) == 1 else None  # an interpreter with flags is not one we start the same way


def python_target(argv: list[str]) -> tuple[str, list[str]] | None:
    """(interpreter, what the host runs) when ``argv`` is a Python program a warm
    host can run exactly as a cold start would: ``python -c CODE …``, ``python
    SCRIPT …`` or a script whose ``#!`` line is a Python interpreter. Else None."""
    if not argv:
        return None
    if os.path.basename(argv[0]).startswith("python"):
        interpreter, target = argv[0], argv[1:]
    else:
        found = _shebang(argv[0])
        if found is None or not os.path.basename(found).startswith("python"):
            return None
        interpreter, target = found, list(argv)
    if not target or (target[0].startswith("-") and target[0] != "-c") or (target[0] == "-c" and len(target) < 2):
        return None
    return interpreter, target


class WarmKey(msgspec.Struct, frozen=True):
    """What makes two calls able to share a warm sandbox: everything its start depends on."""

    argv: tuple[str, ...]
    policy: bytes
    limits: tuple[int, ...]
    env: tuple[tuple[str, str], ...]
    run_as: tuple[int, int] | None
    profile: bytes
    cgroup_root: str | None
    #: Who the calls are for (a daemon's peer uid), also when the sandbox runs as the same
    #: host user for every peer (``run_as`` None: a daemon not root): never shared between peers.
    peer: int | None = None

    @classmethod
    def of(cls, argv: list[str], policy: IsolationPolicy, limits: Limits, profile: Profile,
           env: dict[str, str] | None, run_as: RunAs | None, cgroup_root: Path | None,
           peer: int | None = None) -> WarmKey:
        return cls(tuple(argv), msgspec.json.encode(policy), tuple(getattr(limits, f) for f in LAUNCH_LIMITS),
                   tuple(sorted((env or {}).items())), None if run_as is None else (run_as.uid, run_as.gid),
                   msgspec.json.encode(profile), None if cgroup_root is None else str(cgroup_root), peer)


class WarmStartFailed(Exception):
    """A warm sandbox did not start. ``lasting``: the program cannot go warm here (its
    calls go cold from now on); else only this start failed (this call goes cold)."""

    def __init__(self, message: str, *, lasting: bool = True) -> None:
        super().__init__(message)
        self.lasting = lasting


class _Events:
    """A call's view of its sandbox's cgroup events: what changed during the call."""

    def __init__(self, sandbox: WarmSandbox) -> None:
        self.oom, self.pids = sandbox.note_events()

    def oom_killed(self) -> bool:
        return self.oom

    def pids_exhausted(self) -> bool:
        return self.pids


class WarmSandbox:
    """One warm host in its sandbox; calls take turns (the pool lends it to one at a time)."""

    def __init__(self, key: WarmKey, launch: Launch, proc: Child, ctl: trio.socket.SocketType, stderr: Any) -> None:
        self.key = key
        self.launch = launch
        self.proc = proc
        self.ctl = ctl
        self.stderr = stderr
        self.calls = 0
        self.created = time.monotonic()
        self.last_used = self.created
        self.broken: str | None = None
        self.closed = False
        self._oom_kills = 0
        self._pids_max = 0

    @classmethod
    async def start(cls, key: WarmKey, argv: list[str], *, policy: IsolationPolicy, limits: Limits, profile: Profile,
                    env: dict[str, str] | None, run_as: RunAs | None, cgroup_root: Path | None) -> WarmSandbox:
        """Start the warm host for ``argv`` (see ``python_target``); raises WarmStartFailed
        when it cannot run here, NoetherError when no sandbox could (as a cold run would)."""
        found = python_target(argv)
        bwrap = find_bwrap()
        if found is None or bwrap is None:
            raise WarmStartFailed("not a Python program a warm host can run")
        interpreter, target = found
        call_filter = filter_fd(seccomp_program(profile, deny_unix_sockets=unix_sockets_denied(policy, bwrap)))
        config = {"argv": target, "seccomp_fd": call_filter, "tmpfs_size": limits.tmpfs_size_bytes,
                  "landlock": landlock_scoped(bwrap)}
        host_argv = [interpreter, "-c", host_source(), json.dumps(config)]
        # From here the launch owns the call filter's fd (closed with its own, also when it raises).
        launch = prepare_launch(host_argv, policy=policy, limits=limits, isolation=Isolation("bwrap"),
                                profile=profile, env=env, run_as=run_as, cgroup_root=cgroup_root, warm_host=True,
                                extra_fds=[call_filter])
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        stderr = None
        try:
            stderr = tempfile.TemporaryFile(prefix="noether-warm-")  # noqa: SIM115 (the sandbox closes it)
            proc = await spawn(launch.argv, stdin=theirs.fileno(), stdout=subprocess.DEVNULL, stderr=stderr, env=launch.env,
                               pass_fds=tuple(launch.fds), start_new_session=True, preexec_fn=launch.preexec(limits),
                               cwd="/")
        except BaseException as e:
            ours.close()
            if stderr is not None:
                stderr.close()
            launch.finish()
            if isinstance(e, (OSError, subprocess.SubprocessError)):  # a failing preexec is a SubprocessError
                raise WarmStartFailed(start_failure("bwrap", e), lasting=False) from None
            raise
        finally:
            theirs.close()
            launch.close_fds()
        sandbox = cls(key, launch, proc, trio.socket.from_stdlib_socket(ours), stderr)
        try:
            with trio.move_on_after(START_TIMEOUT_S):
                ready = await sandbox.ctl.recv(4096)
                if ready and json.loads(ready).get("ready") is True:
                    return sandbox
            raise WarmStartFailed(f"the warm host did not start: {sandbox.stderr_tail() or 'no error output'}")
        except BaseException:
            with trio.CancelScope(shield=True):
                await sandbox.aclose()
            raise

    def stderr_tail(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            self.stderr.seek(max(0, os.fstat(self.stderr.fileno()).st_size - 2000))
            lines = self.stderr.read().decode("utf-8", "replace").strip().splitlines()
            return lines[-1] if lines else ""
        return ""

    def note_events(self) -> tuple[bool, bool]:
        """Whether the cgroup counted an OOM kill / a pids.max refusal since the last look."""
        cgroup = self.launch.cgroup
        if cgroup is None:
            return False, False
        oom, pids = cgroup.event_counts()
        changed = (oom > self._oom_kills, pids > self._pids_max)
        self._oom_kills, self._pids_max = oom, pids
        return changed

    def kill(self) -> None:
        """Kill the whole sandbox (host and call alike)."""
        self.broken = self.broken or "killed"
        self.proc.kill_group()
        self.proc.kill()
        if self.launch.cgroup is not None:
            self.launch.cgroup.kill()

    async def call(self, stdin: bytes, limits: Limits, *, expect_json: bool = True) -> Result:
        """Run the program once, in a fresh child (see the module doc)."""
        started = time.monotonic()
        self.calls += 1
        fds: list[int] = []
        ours: list[int] = []
        try:
            for _ in range(3):
                r, w = os.pipe2(os.O_CLOEXEC)
                fds += [r, w]
            in_r, in_w, out_r, out_w, err_r, err_w = fds
            theirs, ours = [in_r, out_w, err_w], [in_w, out_r, err_r]
            run_as = self.launch.run_as
            if run_as is not None:  # the sandbox user may reopen /dev/stdout, as in a cold run
                for fd in theirs:
                    os.fchown(fd, run_as.uid, run_as.gid)
            # The input goes into the pipe now, as much as its buffer takes (all of a small one):
            # no task feeds it then, and the program finds it there when it starts.
            os.set_blocking(in_w, False)
            fed = 0
            with contextlib.suppress(BlockingIOError):
                fed = os.write(in_w, stdin) if stdin else 0
            if fed == len(stdin):
                os.close(in_w)
                ours[0] = fds[1] = -1
            await self.ctl.sendmsg([b"call"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", theirs))])
        except BaseException:
            self.broken = "could not hand the call over"
            for fd in fds:
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            raise
        for fd in theirs:
            os.close(fd)
        streams = [trio.lowlevel.FdStream(fd) if fd >= 0 else None for fd in ours]
        done: dict[str, Any] | None = None

        async def wait() -> None:
            nonlocal done
            raw = await self.ctl.recv(4096)
            if raw:
                done = json.loads(raw)
            else:
                self.broken = "the warm host ended"

        try:
            ex = await exchange(streams[0], streams[1], streams[2], stdin[fed:] if fed else stdin, limits, wait=wait,
                                kill_tree=self.kill, exited=lambda: done is not None)
        except BaseException:
            self.broken = self.broken or "cancelled during a call"
            raise
        finally:
            for stream in streams:
                if stream is not None:
                    with contextlib.suppress(Exception):
                        await stream.aclose()
        if ex.verdict is not None or done is None:
            self.broken = self.broken or (ex.verdict.value if ex.verdict else "no answer")
        self.last_used = time.monotonic()
        wall = int((self.last_used - started) * 1000)
        if done is None and ex.verdict is None:
            return Result(status=Status.ERROR, isolation="bwrap", exit_code=None, wall_ms=wall,
                          stderr_tail=ex.stderr_tail,
                          message="the sandbox ended during the call" + (f": {ex.stderr_tail.strip().splitlines()[-1]}"
                                                                          if ex.stderr_tail.strip() else ""))
        rc = None
        if done is not None:
            rc = -int(done["signal"]) if "signal" in done else int(done["code"])
        return verdict(ex, rc, limits=limits, cgroup=_Events(self), mode="bwrap",
                       expect_json=expect_json, wall_ms=wall, cpu_ms=(done or {}).get("cpu_ms"),
                       max_rss_kb=(done or {}).get("max_rss_kb"))

    async def aclose(self) -> None:
        """Close the control socket (the host's cue to end), kill the tree, then
        let the launch remove the cgroup and give the uid back. Idempotent."""
        if self.closed:
            return
        self.closed = True
        with trio.CancelScope(shield=True):
            self.ctl.close()
            with trio.move_on_after(1):
                await self.proc.wait()
            self.kill()
            with trio.move_on_after(5):
                await self.proc.wait()
            await self.proc.aclose()
            await self.launch.aclose()
            self.stderr.close()

    def abandon(self) -> None:
        """Kill it without the event loop it was started in (that loop has ended)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            self.kill()
        with contextlib.suppress(Exception):
            self.ctl.close()
        with contextlib.suppress(Exception):
            self.launch.finish()
        with contextlib.suppress(Exception):
            self.stderr.close()

    def describe(self, now: float) -> dict[str, Any]:
        argv = self.key.argv
        cgroup = self.launch.cgroup
        return {"program": argv[0] if argv[0] != "-c" else "-c", "peer_uid": None if self.key.run_as is None
                else self.key.run_as[0], "calls": self.calls, "age_s": round(now - self.created, 1),
                "idle_s": round(now - self.last_used, 1),
                "cgroup": next(iter(cgroup.dirs.values())).name if cgroup is not None and cgroup.dirs else None}


class WarmPool:
    """The warm sandboxes of one process (one trio run), bounded."""

    def __init__(self, *, max_sandboxes: int = 8, idle_s: float = 60.0, max_calls: int = 10_000,
                 warm_after: int = 0) -> None:
        self.max_sandboxes = max_sandboxes
        self.idle_s = idle_s
        self.max_calls = max_calls
        #: Calls of a program that go cold before a warm sandbox is started for it: 0 in a
        #: daemon (more calls will come); 1 in a one-shot process, where a program called
        #: once would only pay for a warm start it never uses.
        self.warm_after = warm_after
        self.seen: dict[WarmKey, int] = {}
        self.idle: dict[WarmKey, list[WarmSandbox]] = {}
        self.busy: set[WarmSandbox] = set()
        self.starting = 0
        self.cold_keys: dict[WarmKey, str] = {}
        self.closed = False
        self.changed = trio.Event()
        #: How often ``serve`` woke up (a test checks it sleeps between events).
        self.wakeups = 0
        self.token = trio.lowlevel.current_trio_token()
        self.counters = {k: 0 for k in ("started", "calls", "reused", "expired", "evicted", "retired", "broken",
                                        "start_failures", "cold_fallbacks")}

    @property
    def size(self) -> int:
        return self.starting + len(self.busy) + sum(len(v) for v in self.idle.values())

    async def run(self, argv: list[str], *, policy: IsolationPolicy, limits: Limits, profile: Profile, stdin: bytes,
                  env: dict[str, str] | None = None, run_as: RunAs | None = None, cgroup_root: Path | None = None,
                  expect_json: bool = True, peer: int | None = None) -> Result | None:
        """``argv`` run once in a warm sandbox, or None when this call cannot go warm
        (the caller then runs it cold). ``peer``: who the call is for (a daemon's peer
        uid); calls for different peers never share a sandbox."""
        if self.closed or self.max_sandboxes <= 0 or python_target(argv) is None:
            return None
        key = WarmKey.of(argv, policy, limits, profile, env, run_as, cgroup_root, peer)
        if key in self.cold_keys:
            self.counters["cold_fallbacks"] += 1
            return None
        if self.warm_after and key not in self.idle:
            calls = self.seen.get(key, 0)
            if calls < self.warm_after:
                if len(self.seen) > 4096:
                    self.seen.clear()
                self.seen[key] = calls + 1
                return None
        sandbox = await self._acquire(key, argv, policy=policy, limits=limits, profile=profile, env=env,
                                      run_as=run_as, cgroup_root=cgroup_root)
        if sandbox is None:
            self.counters["cold_fallbacks"] += 1
            return None
        self.counters["calls"] += 1
        try:
            return await sandbox.call(stdin, limits, expect_json=expect_json)
        finally:
            await self._release(sandbox)

    async def _acquire(self, key: WarmKey, argv: list[str], **how: Any) -> WarmSandbox | None:
        ready = self.idle.get(key)
        if ready:
            sandbox = ready.pop()
            if not ready:
                del self.idle[key]
            self.busy.add(sandbox)
            self.counters["reused"] += 1
            return sandbox
        if self.size >= self.max_sandboxes and not await self._evict_one():
            return None
        self.starting += 1
        try:
            sandbox = await WarmSandbox.start(key, argv, **how)
        except WarmStartFailed as e:
            self.counters["start_failures"] += 1
            if e.lasting:
                self.cold_keys[key] = str(e)
            log.warning("warm_sandbox_unavailable", program=argv[0], why=str(e), lasting=e.lasting)
            return None
        except NoetherError:
            return None  # the same refusal comes from the cold path, where it is reported
        finally:
            self.starting -= 1
        self.counters["started"] += 1
        if self.closed:
            await sandbox.aclose()
            return None
        self.busy.add(sandbox)
        return sandbox

    async def _evict_one(self) -> bool:
        """Close the least recently used idle sandbox, if any, to make room."""
        oldest: WarmSandbox | None = None
        for sandboxes in self.idle.values():
            for s in sandboxes:
                if oldest is None or s.last_used < oldest.last_used:
                    oldest = s
        if oldest is None:
            return False
        self._forget_idle(oldest)
        self.counters["evicted"] += 1
        await oldest.aclose()
        return True

    def _forget_idle(self, sandbox: WarmSandbox) -> None:
        sandboxes = self.idle.get(sandbox.key, [])
        with contextlib.suppress(ValueError):
            sandboxes.remove(sandbox)
        if not sandboxes:
            self.idle.pop(sandbox.key, None)

    async def _release(self, sandbox: WarmSandbox) -> None:
        self.busy.discard(sandbox)
        if sandbox.broken or self.closed or sandbox.calls >= self.max_calls:
            self.counters["broken" if sandbox.broken else "retired"] += 1
            await sandbox.aclose()
            return
        self.idle.setdefault(sandbox.key, []).append(sandbox)
        self.changed.set()

    async def serve(self) -> None:
        """Close idle sandboxes once they have been idle for ``idle_s`` (runs until cancelled):
        it sleeps until the next one is due or the pool changes, nothing else."""
        while not self.closed:
            self.wakeups += 1
            if self.changed.is_set():
                self.changed = trio.Event()
            due = min((s.last_used + self.idle_s for v in self.idle.values() for s in v), default=None)
            if due is None:
                await self.changed.wait()
                continue
            # ``last_used`` is time.monotonic(); trio's clock has an offset of its own, so wait relatively.
            with trio.move_on_after(max(0.0, due - time.monotonic())):
                await self.changed.wait()
            await self.expire()

    async def expire(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        old = [s for v in self.idle.values() for s in v if now - s.last_used >= self.idle_s]
        for s in old:
            self._forget_idle(s)
            self.counters["expired"] += 1
        for s in old:
            await s.aclose()
        return len(old)

    async def aclose(self) -> None:
        """Close every idle sandbox; busy ones close when their call ends. No new ones start."""
        self.closed = True
        self.changed.set()
        idle = [s for v in self.idle.values() for s in v]
        self.idle.clear()
        for s in idle:
            await s.aclose()

    async def close_idle(self) -> None:
        """Close every idle sandbox now (an embedded run's end); the pool stays usable."""
        idle = [s for v in self.idle.values() for s in v]
        self.idle.clear()
        for s in idle:
            await s.aclose()

    def abandon(self) -> None:
        """Kill everything without an event loop (the loop that started them has ended)."""
        self.closed = True
        for s in [*self.busy, *(s for v in self.idle.values() for s in v)]:
            s.abandon()
        self.idle.clear()
        self.busy.clear()

    def describe(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "max_sandboxes": self.max_sandboxes, "idle_expiry_s": self.idle_s, "max_calls": self.max_calls,
            "busy": [s.describe(now) for s in self.busy],
            "idle": [s.describe(now) for v in self.idle.values() for s in v],
            "starting": self.starting, "cold_programs": len(self.cold_keys), "counters": dict(self.counters),
        }
