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
import enum
import json
import os
import resource
import signal
import time
from collections.abc import Callable
from typing import Any, Literal

import msgspec
import trio

from noether_nix.errors import NoetherError
from noether_nix.logs import get_logger
from noether_nix.sandbox.bwrap import build_argv, bwrap_works, find_bwrap, open_bind_fds
from noether_nix.sandbox.cgroups import RunCgroup
from noether_nix.sandbox.policy import IsolationPolicy, Limits
from noether_nix.sandbox.profile import Profile, load_profile
from noether_nix.sandbox.seccomp import compile_filter, filter_fd
from noether_nix.sandbox.spawn import spawn

log = get_logger("noether.sandbox")


class Status(enum.StrEnum):
    OK = "ok"
    ERROR = "error"
    SIGNAL = "signal"
    TIMED_OUT = "timed_out"
    OUTPUT_LIMIT = "output_limit"
    MEMORY_LIMIT = "memory_limit"
    PIDS_LIMIT = "pids_limit"
    SPAWN_FAILED = "spawn_failed"
    PROTOCOL_ERROR = "protocol_error"
    CANCELLED = "cancelled"


class Result(msgspec.Struct, kw_only=True):
    status: Status
    message: str
    isolation: Literal["bwrap", "none"]
    exit_code: int | None = None
    signal: int | None = None
    output: Any = None
    stdout_bytes: bytes | None = None
    wall_ms: int = 0
    cpu_ms: int | None = None
    max_rss_kb: int | None = None
    stderr_tail: str = ""

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


class Isolation(msgspec.Struct, frozen=True):
    """``bwrap`` (fail closed when unusable) or an explicit, logged ``none``."""

    mode: Literal["bwrap", "none"] = "bwrap"

    @staticmethod
    def parse(value: str | None) -> Isolation:
        if value in (None, "", "auto", "bwrap"):
            return Isolation("bwrap")
        if value == "none":
            return Isolation("none")
        raise NoetherError("unknown_isolation", f"unknown isolation backend {value!r} (use bwrap or none)",
                           exit_code=2)


def require_bwrap() -> str:
    path = find_bwrap()
    if path is None:
        raise NoetherError("isolation_unavailable", "bubblewrap (bwrap) is not installed; sandboxed stages "
                           "are refused", hint="apt-get install bubblewrap (or run ./dev setup)", exit_code=2)
    ok, why = bwrap_works(path)
    if not ok:
        raise NoetherError("isolation_unavailable", f"bwrap cannot create its namespaces here: {why}",
                           hint="enable unprivileged user namespaces or run as root", exit_code=2)
    return path


_seccomp_cache: dict[tuple[str, ...], bytes] = {}


def _seccomp_program(profile: Profile) -> bytes:
    key = tuple(profile.seccomp_deny)
    if key not in _seccomp_cache:
        _seccomp_cache[key] = compile_filter(list(key))
    return _seccomp_cache[key]


class RunAs(msgspec.Struct, frozen=True):
    """The host user a sandbox runs as, when not the caller's own: the daemon
    (often root) runs a peer's stages as that peer, so a writable bind, a
    granted file or a network peer sees the peer's uid, never root's."""

    uid: int
    gid: int


def _preexec(limits: Limits, cgroup: RunCgroup | None, run_as: RunAs | None = None) -> Callable[[], None]:
    procs = cgroup.procs_files() if cgroup else []

    def setup() -> None:
        # Runs in the child between fork and exec: join the run's cgroup
        # first so nothing escapes accounting, then set rlimits that the
        # sandboxed tree inherits.
        for f in procs:
            with open(f, "w") as fh:
                fh.write(str(os.getpid()))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.max_open_files, limits.max_open_files))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.max_file_size_bytes, limits.max_file_size_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        # Address space is a coarse ceiling over the cgroup's memory cap.
        as_cap = max(limits.memory_bytes * 2, 256 * 1024 * 1024)
        resource.setrlimit(resource.RLIMIT_AS, (as_cap, as_cap))
        if run_as is not None:  # last: the cgroup files above are root's to write
            os.setgroups([])
            os.setgid(run_as.gid)
            os.setuid(run_as.uid)

    return setup


def bwrap_command(argv: list[str], *, policy: IsolationPolicy, limits: Limits, profile: Profile,
                  run_as: RunAs | None) -> tuple[list[str], list[int]]:
    """bwrap's argv and the fds it must inherit (the seccomp program, and the
    binds opened ahead, when bwrap runs as us: as a peer it binds by name
    with the peer's own rights). The caller closes the fds once bwrap started."""
    bwrap = require_bwrap()
    seccomp_fd = filter_fd(_seccomp_program(profile))
    try:
        bind_fds = open_bind_fds(policy) if run_as is None else {}
    except BaseException:
        os.close(seccomp_fd)
        raise
    full = build_argv(bwrap, argv, policy=policy, limits=limits, profile=profile, seccomp_fd=seccomp_fd,
                      bind_fds=bind_fds)
    return full, [seccomp_fd, *bind_fds.values()]


def prepare_launch(argv: list[str], *, policy: IsolationPolicy, limits: Limits, isolation: Isolation,
                   profile: Profile, env: dict[str, str] | None, run_as: RunAs | None
                   ) -> tuple[list[str], dict[str, str], list[int], RunCgroup | None]:
    """What starting ``argv`` under ``isolation`` takes: the full argv, its
    environment, the fds it inherits (the caller closes them once it started)
    and its cgroup (the caller removes it)."""
    child_env = _sandbox_env(profile, policy, env)
    if isolation.mode == "bwrap":
        full_argv, fds = bwrap_command(argv, policy=policy, limits=limits, profile=profile, run_as=run_as)
    else:
        log.warning("unsandboxed_run", argv=argv[:1], why="isolation none was requested explicitly")
        full_argv, fds = list(argv), []
    try:
        cgroup = RunCgroup.create(limits.memory_bytes, limits.max_pids)
    except BaseException:
        close_all(fds)
        raise
    return full_argv, child_env, fds, cgroup


def close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _sandbox_env(profile: Profile, policy: IsolationPolicy, extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: os.environ[k] for k in policy.env_allowlist if k in os.environ}
    env.update(profile.env_fixed)
    env.update(extra or {})
    return env


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
) -> Result:
    profile = profile or load_profile("default")
    mode = isolation.mode
    full_argv, child_env, fds, cgroup = prepare_launch(argv, policy=policy, limits=limits, isolation=isolation,
                                                       profile=profile, env=env, run_as=run_as)
    started = time.monotonic()
    try:
        return await _supervise(full_argv, child_env, stdin, limits, cgroup, tuple(fds), mode,
                                expect_json, started, run_as)
    finally:
        close_all(fds)
        if cgroup is not None:
            cgroup.kill()
            cgroup.remove()


async def _supervise(
    argv: list[str], env: dict[str, str] | None, stdin: bytes, limits: Limits, cgroup: RunCgroup | None,
    pass_fds: tuple[int, ...], mode: Literal["bwrap", "none"], expect_json: bool, started: float,
    run_as: RunAs | None = None,
) -> Result:
    import subprocess

    def elapsed() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        proc = await spawn(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            pass_fds=pass_fds,
            start_new_session=True,
            preexec_fn=_preexec(limits, cgroup, run_as),
            cwd="/",
        )
    except (OSError, subprocess.SubprocessError) as e:  # a failing preexec_fn is a SubprocessError
        return Result(status=Status.SPAWN_FAILED, isolation=mode, exit_code=127,
                      message=f"cannot start {argv[0]}: {getattr(e, 'strerror', None) or e}")
    assert proc.stdin and proc.stdout and proc.stderr
    stdout = bytearray()
    stderr_tail = bytearray()
    verdict: Status | None = None

    def kill_tree() -> None:
        proc.kill_group()
        proc.kill()
        if cgroup is not None:
            cgroup.kill()

    async def feed() -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await proc.stdin.send_all(stdin)  # type: ignore[union-attr]
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await proc.stdin.aclose()  # type: ignore[union-attr]

    async def read_stdout() -> None:
        nonlocal verdict
        while chunk := await proc.stdout.receive_some(65536):  # type: ignore[union-attr]
            if len(stdout) + len(chunk) > limits.max_output_bytes:
                verdict = verdict or Status.OUTPUT_LIMIT
                kill_tree()
                return
            stdout.extend(chunk)

    async def read_stderr() -> None:
        while chunk := await proc.stderr.receive_some(65536):  # type: ignore[union-attr]
            stderr_tail.extend(chunk)
            if len(stderr_tail) > limits.max_stderr_bytes:
                del stderr_tail[: len(stderr_tail) - limits.max_stderr_bytes]

    cancelled = False
    try:
        with trio.move_on_after(limits.timeout_s) as timeout_scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(feed)
                nursery.start_soon(read_stdout)
                nursery.start_soon(read_stderr)
                await proc.wait()
        if timeout_scope.cancelled_caught:
            verdict = Status.TIMED_OUT
    except trio.Cancelled:
        cancelled = True
        raise
    finally:
        if proc.returncode is None or verdict is not None or cancelled:
            kill_tree()
        with trio.CancelScope(shield=True):
            with trio.move_on_after(5):
                await proc.wait()
            await proc.aclose()
    rc = proc.returncode
    tail = stderr_tail.decode("utf-8", "replace")
    usage: dict[str, Any] = {
        "wall_ms": elapsed(),
        "cpu_ms": cgroup.cpu_ms() if cgroup else None,
        "max_rss_kb": cgroup.max_rss_kb() if cgroup else None,
        "stderr_tail": tail,
        "isolation": mode,
        "stdout_bytes": None if expect_json else bytes(stdout),
    }
    if verdict is Status.TIMED_OUT:
        return Result(status=verdict, message=f"timed out after {limits.timeout_s:g}s; the process tree was killed",
                      **usage)
    if verdict is Status.OUTPUT_LIMIT:
        return Result(status=verdict, message=f"stdout passed the {limits.max_output_bytes}-byte cap; "
                      "the process tree was killed", **usage)
    if cgroup is not None and rc != 0 and cgroup.oom_killed():
        return Result(status=Status.MEMORY_LIMIT, exit_code=rc,
                      message=f"ran out of memory (limit {limits.memory_bytes} bytes)", **usage)
    if cgroup is not None and rc != 0 and cgroup.pids_exhausted():
        return Result(status=Status.PIDS_LIMIT, exit_code=rc,
                      message=f"hit the process limit ({limits.max_pids})", **usage)
    if rc is not None and rc < 0:
        sig = -rc
        return Result(status=Status.SIGNAL, signal=sig, exit_code=128 + sig,
                      message=f"killed by signal {signal.Signals(sig).name}", **usage)
    if mode == "bwrap" and rc == 1 and tail.startswith("bwrap: "):
        # bwrap itself failed (e.g. execvp of a program the policy does not show).
        return Result(status=Status.SPAWN_FAILED, exit_code=127,
                      message=f"could not start the program in the sandbox: {tail.strip()[7:]}", **usage)
    if rc != 0:
        first = tail.strip().splitlines()[-1] if tail.strip() else "no error output"
        return Result(status=Status.ERROR, exit_code=rc, message=f"exited with status {rc}: {first}", **usage)
    raw = bytes(stdout)
    if not expect_json:
        return Result(status=Status.OK, exit_code=0, message="ok", **usage)
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        shown = raw[:200].decode("utf-8", "replace")
        return Result(status=Status.PROTOCOL_ERROR, exit_code=0,
                      message=f"stdout must be exactly one JSON value ({e}); got: {shown!r}", **usage)
    return Result(status=Status.OK, exit_code=0, output=value, message="ok", **usage)
