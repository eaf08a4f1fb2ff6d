"""The bubblewrap backend: where bwrap is, whether it works, and its argv."""

from __future__ import annotations

import errno
import functools
import os
import shutil
import stat
import subprocess

from noether_nix.errors import NoetherError
from noether_nix.logs import get_logger
from noether_nix.sandbox.policy import IsolationPolicy, Limits
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


@functools.cache
def bwrap_works(path: str, *, as_uid: int | None = None) -> tuple[bool, str]:
    """Can bwrap create every namespace we ask for on this host (started as
    ``as_uid``: a root daemon starts its peers' sandboxes as the peer, which
    needs unprivileged user namespaces)?"""
    def drop() -> None:
        if as_uid is not None:
            os.setgroups([])
            os.setgid(as_uid)
            os.setuid(as_uid)

    try:
        proc = subprocess.run(
            [path, "--unshare-all", "--unshare-user", "--die-with-parent", "--ro-bind", "/", "/",
             "--proc", "/proc", "--dev", "/dev", "--", "/bin/true"],
            capture_output=True, text=True, timeout=10, preexec_fn=drop if as_uid is not None else None,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    return proc.returncode == 0, proc.stderr.strip()


def build_argv(
    bwrap: str,
    argv: list[str],
    *,
    policy: IsolationPolicy,
    limits: Limits,
    profile: Profile,
    seccomp_fd: int | None,
    bind_fds: dict[tuple[str, int], int] | None = None,
) -> list[str]:
    """bwrap's argv. The sandbox's environment is bwrap's own: start bwrap
    with exactly the variables the stage may see (``env=``), so their values
    never appear in argv, which any local user can read in /proc/PID/cmdline.

    ``bind_fds`` (``("ro"|"rw", index)`` → fd from ``open_bind_fds``, passed
    to bwrap) binds those from the already-opened fd, not by name; bwrap
    closes each fd after its bind, so every bind has its own."""
    fds = bind_fds or {}
    args = [
        bwrap,
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--uid", "65534",
        "--gid", "65534",
        "--cap-drop", "ALL",
        "--proc", "/proc",
        "--dev", "/dev",
        "--size", str(limits.tmpfs_size_bytes), "--tmpfs", "/tmp",
    ]
    if policy.network:
        args.append("--share-net")
        for f in profile.network_ro_files:
            args += ["--ro-bind-try", f, f]
    for i, b in enumerate(policy.ro_binds):
        fd = fds.get(("ro", i))
        args += ["--ro-bind-fd", str(fd), b.sandbox] if fd is not None else ["--ro-bind", b.host, b.sandbox]
    for i, b in enumerate(policy.rw_binds):
        fd = fds.get(("rw", i))
        args += ["--bind-fd", str(fd), b.sandbox] if fd is not None else ["--bind", b.host, b.sandbox]
    if policy.work_host:
        args += ["--bind", policy.work_host, "/work"]
    else:
        args += ["--size", str(limits.tmpfs_size_bytes), "--perms", "0700", "--tmpfs", "/work"]
    args += ["--chdir", "/work"]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
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


def open_bind_fds(policy: IsolationPolicy) -> dict[tuple[str, int], int]:
    """Open every bind's source before bwrap starts (store paths aside: the
    store is immutable), so a path swapped for a symlink between the policy
    check and the mount cannot redirect it. Writable binds must open this
    way; a read-only one that is itself a symlink (usr-merged /bin, /lib) is
    left to bwrap by name. The caller passes the fds to bwrap and closes them."""
    opened: dict[tuple[str, int], int] = {}
    try:
        for kind, binds in (("ro", policy.ro_binds), ("rw", policy.rw_binds)):
            writable = kind == "rw"
            for i, b in enumerate(binds):
                if b.host == "/nix/store" or b.host.startswith("/nix/store/"):
                    continue
                try:
                    opened[(kind, i)] = open_no_follow(b.host)
                except OSError as e:
                    if writable:
                        raise NoetherError("invalid_policy_path", f"cannot bind {b.host}: {e.strerror or e} "
                                           "while opening it (a path changed under the sandbox?)",
                                           path=b.host, exit_code=2) from None
    except BaseException:
        for fd in opened.values():
            os.close(fd)
        raise
    return opened
