"""What starting one sandbox takes, planned before the fork.

``prepare_launch`` decides who the sandbox is on the host (``identity``),
opens every bind by fd, writes the program's environment into bwrap's
``--args`` file, compiles the seccomp filter, creates the run's cgroup and
refuses the run when no memory and process-count limit can be enforced.
The returned ``Launch`` holds all of it: its ``preexec`` runs in the child
between fork and exec, ``close_fds`` once the child started, ``finish``
once the sandbox is gone (cgroup removed, then the uid given back);
``aclose`` (trio) and ``close_blocking`` (no event loop) first wait until
everything in its cgroup has exited.
"""

from __future__ import annotations

import contextlib
import os
import resource
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import msgspec

from noether_nix.errors import NoetherError
from noether_nix.logs import get_logger
from noether_nix.paths import noether_home, private_dir
from noether_nix.sandbox import landlock
from noether_nix.sandbox.bwrap import (
    BindFds,
    build_argv,
    bwrap_is_setuid,
    bwrap_works,
    find_bwrap,
    open_bind_fds,
)
from noether_nix.sandbox.cgroups import RunCgroup
from noether_nix.sandbox.env import args_fd, check_env, setenv_args
from noether_nix.sandbox.identity import (
    RunAs,
    UidLease,
    acquire,
    needs_dedicated_uid,
    sandbox_access_problem,
)
from noether_nix.sandbox.outcome import Exchange, Result, verdict
from noether_nix.sandbox.policy import IsolationPolicy, Limits
from noether_nix.sandbox.profile import Profile
from noether_nix.sandbox.seccomp import cached_filter, filter_fd
from noether_nix.settings import settings

log = get_logger("noether.sandbox")

#: Set to 1 to run sandboxes where no memory / process-count limit exists (settings
#: ``sandbox.allow_without_limits``; the profile's ``allow_without_limits`` likewise).
WITHOUT_LIMITS_ENV = "NOETHER_SANDBOX_WITHOUT_LIMITS"
#: What a sandbox creates is private to its host user (and, for a dedicated
#: sandbox user, to the sandbox group): never world-readable or -writable,
#: whatever the umask of the process that started it.
UMASK_OWN = 0o077
UMASK_DEDICATED = 0o007


class Isolation(msgspec.Struct, frozen=True):
    """``bwrap`` (fail closed when unusable) or an explicit, logged ``none``."""

    mode: Literal["bwrap", "none"] = "bwrap"

    @staticmethod
    def parse(value: str | None) -> Isolation:
        if value in (None, "", "auto", "bwrap"):
            return Isolation("bwrap")
        if value == "none":
            return Isolation("none")
        raise NoetherError("unknown_isolation", f"unknown isolation backend {value!r} (use bwrap or none)")


def require_bwrap(*, as_uid: int | None = None, as_gid: int | None = None) -> str:
    path = find_bwrap()
    if path is None:
        raise NoetherError("isolation_unavailable", "bubblewrap (bwrap) is not installed; sandboxed stages "
                           "are refused", hint="apt-get install bubblewrap (or run ./dev setup)")
    ok, why = bwrap_works(path, as_uid=as_uid, as_gid=as_gid)
    if not ok:
        who = "" if as_uid is None else f" as the sandbox user (uid {as_uid})"
        raise NoetherError("isolation_unavailable", f"bwrap cannot create its namespaces{who} here: {why}",
                           hint="enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, "
                           "user.max_user_namespaces > 0)")
    return path


_seccomp_cache: dict[tuple[tuple[str, ...], bool], bytes] = {}


#: What a warm host may do that its calls may not: make each call's mount and
#: IPC namespaces and mount its tmpfs (``sandbox.warm``). Each call's child
#: loads the full filter on top before any of the program's code runs.
WARM_HOST_ALLOWS = frozenset({"mount", "umount2", "unshare"})


def seccomp_program(profile: Profile, *, deny_unix_sockets: bool = False, warm_host: bool = False) -> bytes:
    """The profile's filter (``warm_host``: the warm host's, without ``WARM_HOST_ALLOWS``):
    compiled once per process, and once per user (kept in the home's cache)."""
    deny = tuple(d for d in profile.seccomp_deny if not (warm_host and d in WARM_HOST_ALLOWS))
    key = (deny, deny_unix_sockets)
    if key not in _seccomp_cache:
        _seccomp_cache[key] = cached_filter(list(key[0]), deny_unix_sockets=deny_unix_sockets,
                                            cache_dir=_filter_cache_dir())
    return _seccomp_cache[key]


def _filter_cache_dir() -> Path | None:
    try:
        return private_dir(noether_home() / "cache")
    except OSError:
        return None


def landlock_scoped(bwrap: str) -> bool:
    """Whether each sandbox started through ``bwrap`` gets a Landlock domain of its own (see ``landlock``)."""
    return landlock.available() and not bwrap_is_setuid(bwrap)


def unix_sockets_denied(policy: IsolationPolicy, bwrap: str) -> bool:
    """A Network sandbox without Landlock scoping may not create unix sockets (see ``landlock``)."""
    return policy.network and not landlock_scoped(bwrap)


def limits_allowed_missing(profile: Profile) -> bool:
    return profile.allow_without_limits or settings().sandbox.allow_without_limits


def check_limits(cgroup: RunCgroup | None, *, dedicated: bool, profile: Profile) -> None:
    """Fail closed: a sandbox needs a memory cap (a cgroup) and a process
    cap (a cgroup, or RLIMIT_NPROC on its own dedicated uid)."""
    missing = []
    if cgroup is None or not cgroup.has_memory():
        missing.append("memory")
    if not dedicated and (cgroup is None or not cgroup.has_pids()):
        missing.append("process-count")
    if not missing:
        return
    what = " and ".join(missing)
    if limits_allowed_missing(profile):
        log.warning("sandbox_without_limits", missing=missing, why="allowed by the operator")
        return
    raise NoetherError("limits_unavailable", f"no {what} limit can be enforced for a sandbox here (no writable "
                       "cgroup with the memory and pids controllers), so the sandboxed run was refused",
                       hint="run the daemon in a delegated cgroup (systemd: Delegate=yes, as in "
                       "systemd/noether.service) or as root; to run without these limits anyway, set "
                       f"\"allow_without_limits\": true in the sandbox profile or {WITHOUT_LIMITS_ENV}=1")


def close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _own_std_fds(uid: int, gid: int) -> None:
    """Give the sandbox user the pipes (and anonymous files) on fds 0-2, so
    it can reopen them (``/dev/stdout`` is ``/proc/self/fd/1``). Named
    files are left alone."""
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            st = os.fstat(fd)
            if stat.S_ISFIFO(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_nlink == 0):
                os.fchown(fd, uid, gid)


class Launch:
    """One planned sandbox start (see the module doc)."""

    def __init__(self, argv: list[str], env: dict[str, str], fds: list[int], cgroup: RunCgroup | None,
                 run_as: RunAs | None, lease: UidLease | None, mode: Literal["bwrap", "none"]) -> None:
        self.argv = argv
        self.env = env
        self.fds = fds
        self.cgroup = cgroup
        self.run_as = run_as
        self.lease = lease
        self.mode = mode

    @property
    def dedicated(self) -> bool:
        return self.lease is not None

    def preexec(self, limits: Limits) -> Callable[[], None]:
        join = self.cgroup.joiner() if self.cgroup else None
        run_as = self.run_as
        dedicated = self.dedicated
        scope = landlock.restrictor() if self.mode == "bwrap" and landlock_scoped(self.argv[0]) else None

        def setup() -> None:
            # Runs in the child between fork and exec: join the run's cgroup
            # first so nothing escapes accounting, then set rlimits that the
            # sandboxed tree inherits.
            if join is not None:
                join()
            resource.setrlimit(resource.RLIMIT_NOFILE, (limits.max_open_files, limits.max_open_files))
            resource.setrlimit(resource.RLIMIT_FSIZE, (limits.max_file_size_bytes, limits.max_file_size_bytes))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            # Address space is a coarse ceiling over the cgroup's memory cap.
            as_cap = max(limits.memory_bytes * 2, 256 * 1024 * 1024)
            resource.setrlimit(resource.RLIMIT_AS, (as_cap, as_cap))
            if dedicated:
                # The uid is this sandbox's alone: its process count is the sandbox's.
                resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_pids, limits.max_pids))
            os.umask(UMASK_DEDICATED if dedicated else UMASK_OWN)
            if scope is not None:
                landlock.restrict_self(scope)
            if run_as is not None:  # last: the cgroup files above are root's to write
                _own_std_fds(run_as.uid, run_as.gid)
                os.setgroups([])
                os.setgid(run_as.gid)
                os.setuid(run_as.uid)

        return setup

    def close_fds(self) -> None:
        close_all(self.fds)
        self.fds = []

    def verdict(self, ex: Exchange, rc: int | None, *, limits: Limits, expect_json: bool,
                started: float) -> Result:
        """The Result of this cold start (``outcome.verdict``), with its wall time since
        ``started`` and the CPU time and peak memory its cgroup counted."""
        cgroup = self.cgroup
        return verdict(ex, rc, limits=limits, cgroup=cgroup, mode=self.mode, expect_json=expect_json,
                       wall_ms=int((time.monotonic() - started) * 1000),
                       cpu_ms=cgroup.cpu_ms() if cgroup else None, max_rss_kb=cgroup.max_rss_kb() if cgroup else None)

    async def aclose(self) -> None:
        """Once the sandbox's own process is gone: kill what is left and wait until
        it has exited, remove the cgroup, then give the uid back. A run ends
        only when everything it started is gone."""
        drained = self.cgroup is None
        try:
            if self.cgroup is not None:
                drained = await self.cgroup.drain()
        finally:  # the cgroup is removed also when the wait fails; the uid goes back only once all is gone
            self.finish(uid_free=drained)

    def close_blocking(self) -> None:
        """``aclose`` without trio (``sandbox.blocking``): kill what is left and wait
        (bounded) until it has exited, remove the cgroup, then give the uid back."""
        drained = self.cgroup is None
        try:
            if self.cgroup is not None:
                drained = self.cgroup.drain_blocking()
        finally:
            self.finish(uid_free=drained)

    def finish(self, *, uid_free: bool = True) -> None:
        """Once the sandbox is gone: kill what is left, remove the cgroup, then give the uid back.
        ``uid_free=False``: its processes were not all seen gone (a drain that ran out of time or
        failed), so its dedicated uid stays out of the pool for as long as this process runs: a
        later sandbox must never share a uid with what is left of this one."""
        self.close_fds()
        try:
            if self.cgroup is not None:
                self.cgroup.kill()
                self.cgroup.remove()
        finally:
            if self.lease is not None:
                if uid_free:
                    self.lease.release()
                else:
                    _WITHHELD.append(self.lease)
                    log.warning("sandbox_uid_withheld", uid=self.lease.uid,
                                why="processes of its sandbox were not seen to exit")
                self.lease = None


#: Leases of sandbox uids whose processes were not all seen to exit (``Launch.finish``).
_WITHHELD: list[UidLease] = []


def start_failure(program: str, e: BaseException) -> str:
    """Why a planned start failed, in a sentence: the OS's reason, or — for an exception in the
    child before it became ``program`` (``Launch.preexec``, which Python reports only as
    "Exception occurred in preexec_fn") — which step that is."""
    if isinstance(e, subprocess.SubprocessError) and "preexec" in str(e):
        return (f"cannot start {program}: preparing its process failed (joining the run's cgroup, setting its "
                "resource limits, its Landlock scope or its user); `noether doctor` shows which of those this host "
                "supports")
    return f"cannot start {program}: {getattr(e, 'strerror', None) or e}"


def _sandbox_env(profile: Profile, policy: IsolationPolicy, extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: os.environ[k] for k in policy.env_allowlist if k in os.environ}
    env.update(profile.env_fixed)
    env.update(extra or {})
    return env


def _check_bind_access(policy: IsolationPolicy, fds: BindFds, gid: int) -> None:
    """A dedicated sandbox user must be able to use every bind (store paths
    and the profile's optional files aside): refuse before starting rather
    than fail inside."""
    for (kind, i), fd in fds.items():
        if kind == "net":
            continue
        if kind == "work":
            host, writable = policy.work_host or "", True
        else:
            host, writable = (policy.ro_binds if kind == "ro" else policy.rw_binds)[i].host, kind == "rw"
        if host == "/nix/store" or host.startswith("/nix/store/"):
            continue
        problem = sandbox_access_problem(os.fstat(fd), host, writable=writable, gid=gid)
        if problem is not None:
            raise NoetherError("invalid_policy_path", f"cannot bind {host}: {problem[0]}", path=host,
                               hint=problem[1])


def prepare_launch(argv: list[str], *, policy: IsolationPolicy, limits: Limits, isolation: Isolation,
                   profile: Profile, env: dict[str, str] | None, run_as: RunAs | None,
                   cgroup_root: Path | None = None, warm_host: bool = False,
                   extra_fds: list[int] | None = None) -> Launch:
    """Plan starting ``argv`` under ``isolation`` (see the module doc). The
    caller starts ``launch.argv`` with ``launch.env`` and
    ``launch.preexec(limits)``, passing ``launch.fds``, then calls
    ``close_fds`` and, once it is gone, ``finish``.

    ``warm_host``: ``argv`` is a warm host (``sandbox.warm``): the same sandbox,
    but it keeps CAP_SYS_ADMIN and CAP_SETPCAP inside its user namespace and
    runs under the filter without ``WARM_HOST_ALLOWS``. ``extra_fds`` are
    handed to the program and closed with the launch's own (also when this raises)."""
    try:
        check_env(env)
        if warm_host and isolation.mode != "bwrap":
            raise NoetherError("isolation_unavailable", "a warm sandbox needs bwrap")
    except BaseException:
        close_all(extra_fds or [])
        raise
    child_env = _sandbox_env(profile, policy, env)
    if isolation.mode == "none":
        log.warning("unsandboxed_run", argv=argv[:1], why="isolation none was requested explicitly")
        return Launch(list(argv), child_env, list(extra_fds or []), RunCgroup.create(limits.memory_bytes, limits.max_pids,
                                                                 root=cgroup_root), run_as, None, "none")
    lease: UidLease | None = None
    fds: list[int] = list(extra_fds or [])  # ours from here on, closed on any failure
    cgroup: RunCgroup | None = None
    try:
        if needs_dedicated_uid(run_as):
            # Never host root: a uid of its own from the sandbox range.
            lease = acquire(profile.sandbox_uids)
            run_as = lease.run_as
            bwrap = require_bwrap(as_uid=profile.sandbox_uids.base, as_gid=lease.gid)
        else:
            bwrap = require_bwrap()
        deny_unix = unix_sockets_denied(policy, bwrap)
        fds.append(filter_fd(seccomp_program(profile, deny_unix_sockets=deny_unix, warm_host=warm_host)))
        seccomp_fd = fds[-1]
        # A peer's sandbox binds by name with the peer's own rights; every
        # other one binds what was checked, by fd.
        peer = run_as is not None and lease is None
        bind_fds = None if peer else open_bind_fds(policy, profile)
        fds.extend((bind_fds or {}).values())
        if lease is not None and bind_fds is not None:
            _check_bind_access(policy, bind_fds, lease.gid)
        fds.append(args_fd(setenv_args(child_env)))
        full = build_argv(bwrap, argv, policy=policy, limits=limits, profile=profile, seccomp_fd=seccomp_fd,
                          bind_fds=bind_fds, args_fd=fds[-1], warm_host=warm_host)
        cgroup = RunCgroup.create(limits.memory_bytes, limits.max_pids, root=cgroup_root)
        check_limits(cgroup, dedicated=lease is not None, profile=profile)
    except BaseException:
        close_all(fds)
        if cgroup is not None:
            cgroup.remove()
        if lease is not None:
            lease.release()
        raise
    # bwrap itself starts with an empty environment: the program's travels in the --args file.
    return Launch(full, {}, fds, cgroup, run_as, lease, "bwrap")
