"""The bubblewrap backend: where bwrap is, whether it works, and its argv."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

from noether_nix.errors import NoetherError
from noether_nix.logs import get_logger
from noether_nix.paths import noether_home, private_dir
from noether_nix.sandbox.policy import IsolationPolicy, Limits, bind_refusal
from noether_nix.sandbox.profile import Profile

log = get_logger("noether.sandbox")

TRUSTED_PATHS = (
    "/run/current-system/sw/bin/bwrap",
    "/nix/var/nix/profiles/default/bin/bwrap",
    "/usr/bin/bwrap",
    "/usr/local/bin/bwrap",
)


def _root_owned(path: str) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_uid == 0 and not (st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


@functools.cache
def find_bwrap() -> str | None:
    """bwrap from a root-owned system path; $PATH only as a warned fallback."""
    for p in TRUSTED_PATHS:
        if os.access(p, os.X_OK) and _root_owned(p):
            return p
    found = shutil.which("bwrap")
    if found:
        log.warning("bwrap_from_path", path=found, why="not in a trusted system path")
        return found
    return None


@functools.cache
def bwrap_version(path: str) -> str:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.strip().split()[-1] if out.strip() else "unknown"


#: How long a successful probe is believed by other processes of the same user (``_probe_record``).
PROBE_TTL_S = 600.0
#: What decides whether the probe can succeed, besides bwrap itself and the uid.
_PROBE_INPUTS = ("/proc/sys/kernel/random/boot_id", "/proc/sys/user/max_user_namespaces",
                 "/proc/sys/kernel/unprivileged_userns_clone", "/proc/sys/kernel/apparmor_restrict_unprivileged_userns")


def _probe_record(path: str, as_uid: int | None, as_gid: int | None) -> Path | None:
    """Where a successful probe is remembered: a file in the user's private cache whose
    name covers bwrap's file, the uid, this boot and the sysctls that allow user
    namespaces. A change of any of them, or ``PROBE_TTL_S``, means a new probe."""
    parts = [path, str(as_uid), str(as_gid)]
    try:
        st = os.stat(path)
        parts.append(f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_mode}")
        for f in _PROBE_INPUTS:
            with contextlib.suppress(OSError), open(f) as fh:
                parts.append(f + "=" + fh.read().strip())
        cache = private_dir(noether_home() / "cache")
    except OSError:
        return None
    return cache / f"bwrap-works-{hashlib.sha256(chr(0).join(parts).encode()).hexdigest()[:32]}"


@functools.cache
def bwrap_works(path: str, *, as_uid: int | None = None, as_gid: int | None = None,
                fresh: bool = False) -> tuple[bool, str]:
    """Can bwrap create every namespace we ask for on this host (started as
    ``as_uid``: a root daemon starts its peers' sandboxes as the peer, and
    root's own as a dedicated sandbox user, which needs unprivileged user
    namespaces)? A success is remembered for ``PROBE_TTL_S`` (``_probe_record``),
    so a one-shot process does not start bwrap twice before its first stage;
    ``fresh`` always probes (doctor, preflight). A wrong belief fails closed: the
    run's own bwrap then fails to start."""
    record = None if fresh else _probe_record(path, as_uid, as_gid)
    if record is not None:
        with contextlib.suppress(OSError):
            st = os.stat(record, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and time.time() - st.st_mtime < PROBE_TTL_S:
                return True, ""
    ok, why = _probe(path, as_uid=as_uid, as_gid=as_gid)
    if ok and record is not None:
        with contextlib.suppress(OSError):
            os.close(os.open(record, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
    return ok, why


def _probe(path: str, *, as_uid: int | None, as_gid: int | None) -> tuple[bool, str]:
    def drop() -> None:
        if as_uid is not None:
            os.setgroups([])
            os.setgid(as_gid if as_gid is not None else as_uid)
            os.setuid(as_uid)

    # The options every launch relies on, so a bwrap without them (--ro-bind-fd
    # came with 0.10, and Debian's 0.8.0-2+deb12u1) fails here, not per run.
    root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    args = os.memfd_create("noether-bwrap-probe", os.MFD_CLOEXEC)
    try:
        os.write(args, b"--clearenv\0--setenv\0A\0B\0")
        os.lseek(args, 0, os.SEEK_SET)
        proc = subprocess.run(
            [path, "--args", str(args), "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
             "--hostname", HOSTNAME, "--ro-bind-fd", str(root), "/", "--proc", "/proc", "--dev", "/dev",
             "--remount-ro", "/", "--", "/bin/true"],
            capture_output=True, text=True, timeout=10, env={}, pass_fds=(root, args),
            preexec_fn=drop if as_uid is not None else None,
        )
    except (OSError, subprocess.TimeoutExpired, subprocess.SubprocessError) as e:
        return False, str(e)
    finally:
        os.close(root)
        os.close(args)
    return proc.returncode == 0, proc.stderr.strip()


def bwrap_is_setuid(path: str) -> bool:
    try:
        return bool(os.stat(path).st_mode & stat.S_ISUID)
    except OSError:
        return False


#: The sandbox's host name (``--unshare-uts`` alone would keep the host's).
HOSTNAME = "noether"

BindFds = dict[tuple[str, int], int]


def build_argv(
    bwrap: str,
    argv: list[str],
    *,
    policy: IsolationPolicy,
    limits: Limits,
    profile: Profile,
    seccomp_fd: int | None,
    bind_fds: BindFds | None = None,
    args_fd: int | None = None,
    warm_host: bool = False,
) -> list[str]:
    """bwrap's argv.

    ``args_fd`` (from ``env.args_fd``) carries the program's environment as
    ``--clearenv --setenv …``: bwrap itself is started with an empty
    environment, and the values never appear in an argv that any local user
    can read in /proc/PID/cmdline.

    ``bind_fds`` (from ``open_bind_fds``) binds every path from an fd opened
    ahead, never by name: ``--bind-fd`` / ``--ro-bind-fd``; bwrap closes each
    fd after its bind, so every bind has its own. Without it (a sandbox that
    runs as a peer, binding with the peer's own rights) paths are bound by
    name.

    The root, ``/dev`` and ``/proc`` (with ``/proc/sys``, ``/proc/sysrq-trigger``
    and the rest) are read-only once mounted; ``/tmp``, ``/work`` and
    ``/dev/shm`` are size-capped tmpfs; the host name is fixed."""
    by_fd = bind_fds is not None
    fds = bind_fds or {}
    size = str(limits.tmpfs_size_bytes)
    args = [bwrap]
    if args_fd is not None:
        args += ["--args", str(args_fd)]
    args += [
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--uid", "65534",
        "--gid", "65534",
        "--cap-drop", "ALL",
        # A warm host makes each call's namespaces and mounts, then drops both (sandbox.warm).
        # It is the sandbox's pid 1 itself: bwrap's init would be a process every call
        # could reach (dumpable, the sandbox's uid, no capability: its /proc/1/root is
        # the mounts all calls share), and a call cannot signal an init.
        *(["--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_SETPCAP", "--as-pid-1"] if warm_host else []),
        "--hostname", HOSTNAME,
        "--proc", "/proc",
        "--dev", "/dev",
        "--size", size, "--tmpfs", "/dev/shm",
        "--size", size, "--tmpfs", "/tmp",
    ]

    def bind(key: tuple[str, int], host: str, dest: str, *, writable: bool, optional: bool = False) -> None:
        fd = fds.get(key)
        if fd is not None:
            args.extend(["--bind-fd" if writable else "--ro-bind-fd", str(fd), dest])
        elif by_fd:
            if not optional:
                raise NoetherError("invalid_policy_path", f"no open fd for the bind of {host}", path=host,
                                   exit_code=2)
        elif optional:
            args.extend(["--ro-bind-try", host, dest])
        else:
            args.extend(["--bind" if writable else "--ro-bind", host, dest])

    if policy.network:
        args.append("--share-net")
        for i, f in enumerate(profile.network_ro_files):
            bind(("net", i), f, f, writable=False, optional=True)
    for i, b in enumerate(policy.ro_binds):
        bind(("ro", i), b.host, b.sandbox, writable=False)
    for i, b in enumerate(policy.rw_binds):
        bind(("rw", i), b.host, b.sandbox, writable=True)
    if policy.work_host:
        bind(("work", 0), policy.work_host, "/work", writable=True)
    else:
        args += ["--size", size, "--perms", "0700", "--tmpfs", "/work"]
    # Last, once every mount point exists: nothing outside /work, /tmp and
    # /dev/shm (and writable binds) can be written, /proc/sys included.
    args += ["--remount-ro", "/dev", "--remount-ro", "/proc", "--remount-ro", "/"]
    args += ["--chdir", "/work"]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    # Everything after "--" is the program and its arguments, whatever they look like.
    return [*args, "--", *argv]


def open_no_follow(path: str) -> int:
    """An ``O_PATH`` fd for an absolute path, opened one component at a time
    without following any symlink: what it names cannot change afterwards."""
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        parts = [part for part in path.split("/") if part]
        for i, part in enumerate(parts):
            flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_DIRECTORY if i < len(parts) - 1 else 0)
            nxt = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = nxt
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            raise OSError(errno.ELOOP, "is a symlink", path)
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_resolved(path: str, *, writable: bool) -> int:
    """An fd for what ``path`` names now. A read-only path's symlinks are
    resolved once, deliberately; the result is checked again (a link may
    have been pointed at ``/`` since the policy was checked) and opened
    without following anything, so it cannot change between this check and
    the mount. A writable path must have no symlink at all."""
    target = path if writable else os.path.realpath(path)
    why = bind_refusal(target, writable=writable)
    if why is not None:
        raise NoetherError("invalid_policy_path", f"cannot bind {path}: {why}", path=path, exit_code=2)
    try:
        return open_no_follow(target)
    except OSError as e:
        raise NoetherError("invalid_policy_path", f"cannot bind {path}: {e.strerror or e} while opening "
                           f"{target} (a path changed under the sandbox?)", path=path, exit_code=2) from None


def open_bind_fds(policy: IsolationPolicy, profile: Profile | None = None) -> BindFds:
    """Open every bind's source before bwrap starts (read-only, writable,
    the work dir and, for Network, the profile's resolver and CA files), so
    no path can be redirected between the policy check and the mount. A
    path that cannot be opened this way is refused, never bound by name;
    only the profile's optional network files may be missing. The caller
    passes the fds to bwrap and closes them."""
    opened: BindFds = {}
    try:
        for i, b in enumerate(policy.ro_binds):
            opened[("ro", i)] = open_resolved(b.host, writable=False)
        for i, b in enumerate(policy.rw_binds):
            opened[("rw", i)] = open_resolved(b.host, writable=True)
        if policy.work_host:
            opened[("work", 0)] = open_resolved(policy.work_host, writable=True)
        if policy.network and profile is not None:
            for i, f in enumerate(profile.network_ro_files):
                try:
                    opened[("net", i)] = open_no_follow(os.path.realpath(f))
                except OSError:
                    continue  # not on this host: the sandbox goes without it
    except BaseException:
        for fd in opened.values():
            os.close(fd)
        raise
    return opened
