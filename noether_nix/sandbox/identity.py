"""Who a sandbox is on the host.

bwrap's ``--uid 65534`` is a mapping, not an identity: the sandbox is, on
the host, whoever started bwrap. So no sandbox is started by root:

- started by a user other than root (a daemon as its own user, ``noether
  run`` as a user): the sandbox is that user;
- started by a root daemon for a peer other than root: the sandbox is the
  peer (``RunAs``), so what it reads, writes or reaches happens with the
  peer's rights;
- started by root for root (``noether run`` or ``stage test`` as root, a
  root daemon serving root): the sandbox is a **dedicated sandbox user**
  ``noether-sbx-N`` from a configured range, like nix-daemon's build users.
  Each concurrent sandbox holds its own uid (a lock file under a root-only
  directory, so concurrent processes never share one), so sandboxes cannot
  signal or ptrace each other, and ``RLIMIT_NPROC`` caps exactly one
  sandbox. The uid is released once the sandbox and its cgroup are gone.

If the range's users do not exist, a root-initiated sandbox is refused
(``sandbox_users_missing``), never run as root.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import os
import pwd
import secrets
import stat
import threading

import msgspec

from noether_nix.errors import NoetherError

SANDBOX_GROUP = "noether-sbx"
USER_PREFIX = "noether-sbx-"
SETUP_HINT = ("create them: ./dev setup as root, or systemd-sysusers with systemd/noether.sysusers.conf "
              "(or point \"sandbox_uids\" in the sandbox profile at a range that exists)")


class SandboxUids(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The dedicated sandbox users: uid ``base + i`` is ``noether-sbx-<i>``
    (primary group ``noether-sbx``) for ``i`` in ``0..count-1``. The names are
    fixed and checked, so a profile can only pick among those users."""

    base: int = 80000
    count: int = 64
    #: Root-only directory of the per-uid lock files (shared by every process on the host).
    lock_dir: str = "/run/noether-sandbox-uids"


class RunAs(msgspec.Struct, frozen=True):
    """The host user a sandbox runs as, when not the caller's own: the daemon
    (often root) runs a peer's stages as that peer, so a writable bind, a
    granted file or a network peer sees the peer's uid, never root's."""

    uid: int
    gid: int


class UidLease:
    """One dedicated uid held by one sandbox until ``release``."""

    def __init__(self, uid: int, gid: int, fd: int) -> None:
        self.uid = uid
        self.gid = gid
        self._fd: int | None = fd

    @property
    def run_as(self) -> RunAs:
        return RunAs(uid=self.uid, gid=self.gid)

    def release(self) -> None:
        """Give the uid back (closing the lock file drops its lock). Idempotent."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def needs_dedicated_uid(run_as: RunAs | None) -> bool:
    """Would a sandbox started now (for ``run_as``) be host root without a dedicated uid?"""
    if run_as is not None:
        return run_as.uid == 0
    return os.geteuid() == 0


def sandbox_gid() -> int:
    try:
        gid = grp.getgrnam(SANDBOX_GROUP).gr_gid
    except KeyError:
        raise NoetherError("sandbox_users_missing", f"sandboxes started as root run as dedicated users, and group "
                           f"{SANDBOX_GROUP} does not exist on this host; the run was refused (a sandbox is never "
                           "host root)", hint=SETUP_HINT) from None
    if gid == 0:
        raise NoetherError("sandbox_users_missing", f"group {SANDBOX_GROUP} has gid 0; sandboxes never run as root",
                           hint=SETUP_HINT)
    return gid


def check_user(config: SandboxUids, index: int, gid: int) -> int:
    """The uid of ``noether-sbx-<index>``, checked: it exists at ``base + index``
    with that exact name and the sandbox group, and is not root."""
    uid = config.base + index
    want = f"{USER_PREFIX}{index}"
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        raise NoetherError("sandbox_users_missing", f"sandboxes started as root run as dedicated users "
                           f"{USER_PREFIX}0…{config.count - 1} (uids {config.base}–{config.base + config.count - 1}); "
                           f"uid {uid} ({want}) does not exist, so the run was refused (a sandbox is never host root)",
                           hint=SETUP_HINT) from None
    if entry.pw_name != want or entry.pw_gid != gid or uid == 0:
        raise NoetherError("sandbox_users_missing", f"uid {uid} is {entry.pw_name!r} with group {entry.pw_gid}, not "
                           f"the sandbox user {want!r} of group {SANDBOX_GROUP}; no sandbox runs as another account",
                           hint=SETUP_HINT)
    return uid


def check_range(config: SandboxUids) -> tuple[int, list[int]]:
    """The sandbox gid and every uid of the range (raises when any is missing or wrong)."""
    if config.base <= 0 or config.count <= 0 or config.base + config.count > 2**31 - 1:
        raise NoetherError("invalid_profile", f"sandbox_uids: base {config.base} and count {config.count} must be "
                           "positive and below 2^31")
    gid = sandbox_gid()
    return gid, [check_user(config, i, gid) for i in range(config.count)]


def _lock_dir(path: str) -> int:
    """The lock directory, created root-only if missing; refused if it is a
    symlink, not root's, or writable by anyone else."""
    unavailable = "sandbox_uids_unavailable"
    if not os.path.isabs(path):
        raise NoetherError(unavailable, f"sandbox_uids.lock_dir {path!r} must be absolute")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise NoetherError(unavailable, f"cannot create the sandbox uid lock directory {path}: {e.strerror}",
                           path=path,
                           hint="it must be creatable by root (under systemd: ReadWritePaths= or RuntimeDirectory=)"
                           ) from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise NoetherError(unavailable, f"cannot open the sandbox uid lock directory {path}: {e.strerror}",
                           path=path) from None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        os.close(fd)
        raise NoetherError(unavailable, f"the sandbox uid lock directory {path} must belong to uid {os.geteuid()} "
                           f"with mode 0700 (it has uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}); refusing to "
                           "trust it", path=path)
    return fd


# Where this process starts looking: random, so processes started one after
# another do not all reuse the first uid of the range.
_cursor = secrets.randbelow(1 << 16)
_cursor_lock = threading.Lock()


def acquire(config: SandboxUids) -> UidLease:
    """A free dedicated uid, held until ``release``.

    A uid is free when no process on the host holds the lock on its file
    (``flock``, dropped by the kernel when its holder dies). The search
    starts after the last uid this process took, so a uid is reused as late
    as possible."""
    global _cursor
    if config.count <= 0 or config.base <= 0:
        raise NoetherError("invalid_profile", "sandbox_uids: base and count must be positive")
    gid = sandbox_gid()
    dfd = _lock_dir(config.lock_dir)
    try:
        with _cursor_lock:
            for k in range(config.count):
                index = (_cursor + k) % config.count
                uid = config.base + index
                fd = os.open(str(uid), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                try:
                    check_user(config, index, gid)
                except BaseException:
                    os.close(fd)
                    raise
                _cursor = index + 1
                return UidLease(uid, gid, fd)
    finally:
        os.close(dfd)
    raise NoetherError("sandbox_users_busy", f"all {config.count} sandbox users are running sandboxes right now", hint="retry later, or raise sandbox_uids.count in the sandbox profile (and create "
                       "the extra users)")


def access_refusal(st: os.stat_result, *, writable: bool, gid: int) -> str | None:
    """Why a dedicated sandbox user (group ``gid``, no supplementary groups)
    could not read (or write) what ``st`` describes, or None. Its uid differs
    per run, so only the group and other permission bits count."""
    directory = stat.S_ISDIR(st.st_mode)
    need = (stat.S_IWOTH if writable else stat.S_IROTH) | (stat.S_IXOTH if directory else 0)
    if st.st_gid == gid:
        bits, whose = (st.st_mode >> 3) & 0o7, f"group {SANDBOX_GROUP}"
    else:
        bits, whose = st.st_mode & 0o7, "other users"
    if bits & need == need:
        return None
    what = "write into" if writable and directory else "write" if writable else "read"
    return f"the sandbox runs as a {SANDBOX_GROUP} user, and {whose} may not {what} it"


def reach_refusal(path: str, *, gid: int) -> tuple[str, str] | None:
    """bwrap, running as the dedicated sandbox user, resolves each bind
    source by name (even ``--bind-fd`` does), so every directory above a
    bind must be searchable by that user. The first that is not, and why."""
    parent = os.path.dirname(os.path.realpath(path))
    chain = []
    while True:
        chain.append(parent)
        if parent == "/":
            break
        parent = os.path.dirname(parent)
    for d in reversed(chain):
        try:
            st = os.stat(d)
        except OSError as e:
            return d, f"{d} cannot be examined ({e.strerror})"
        bits = (st.st_mode >> 3) & 0o7 if st.st_gid == gid else st.st_mode & 0o7
        if not bits & 0o1:
            whose = f"group {SANDBOX_GROUP}" if st.st_gid == gid else "other users"
            return d, f"the sandbox runs as a {SANDBOX_GROUP} user, and {whose} may not search {d} above it"
    return None


def access_hint(path: str, *, writable: bool) -> str:
    if writable:
        return f"let the sandbox users write there: chgrp {SANDBOX_GROUP} {path} && chmod g+rwx {path}"
    return f"let the sandbox users read it: chgrp {SANDBOX_GROUP} {path} && chmod g+rX {path} (or chmod o+rX)"


def sandbox_access_problem(st: os.stat_result, path: str, *, writable: bool, gid: int) -> tuple[str, str] | None:
    """Why a dedicated sandbox user could not use ``path`` (``st``: its stat) as a bind,
    and the fix; None when it can: its own permission bits, then every directory above it."""
    why = access_refusal(st, writable=writable, gid=gid)
    if why is not None:
        return why, access_hint(path, writable=writable)
    blocked = reach_refusal(path, gid=gid)
    if blocked is not None:
        return blocked[1], (f"chmod o+x {blocked[0]} (or chgrp {SANDBOX_GROUP} and chmod g+x), or use a path "
                            "outside it")
    return None


def check_grant_access(grants: list[str], *, writable: bool, run_as: RunAs | None, flag: str) -> None:
    """Before a run: refuse a file grant the run's dedicated sandbox user
    could not use (runs started by root; other runs use the starter's rights)."""
    if not grants or not needs_dedicated_uid(run_as):
        return
    gid = sandbox_gid()
    for grant in grants:
        path = os.path.realpath(grant)
        try:
            st = os.stat(path)
        except OSError as e:
            raise NoetherError("invalid_grant", f"cannot grant {grant}: {e.strerror}", path=flag) from None
        problem = sandbox_access_problem(st, path, writable=writable, gid=gid)
        if problem is not None:
            raise NoetherError("invalid_grant", f"cannot grant {grant}: {problem[0]}", path=flag, hint=problem[1])
