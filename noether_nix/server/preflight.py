"""What the daemon checks about its host before it serves anyone.

A daemon whose Nix store is unusable, whose bwrap cannot build a sandbox,
or that has no way to cap a stage's memory and processes, would accept
every run and fail each one later (or, without limits, run it unbounded).
:func:`preflight_host` names those problems up front; the daemon refuses to
start with them (exit status :data:`EXIT_HOST_UNUSABLE`, which the unit
does not restart on).
"""

from __future__ import annotations

import errno
import os
import pwd
import shutil
import socket

from noether_nix.errors import NoetherError
from noether_nix.sandbox.bwrap import bwrap_works, find_bwrap
from noether_nix.sandbox.cgroups import ROOT, _own_paths, mechanisms

#: EX_CONFIG: the host, not the daemon, needs fixing (noether.service has RestartPreventExitStatus=78).
EXIT_HOST_UNUSABLE = 78

NIX_STATE_DIR = "/nix/var/nix"
NIX_DAEMON_SOCKET = "/nix/var/nix/daemon-socket/socket"


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def _daemon_socket(remote: str) -> str:
    if remote.startswith("unix://"):
        return remote[len("unix://"):]
    return os.environ.get("NIX_DAEMON_SOCKET_PATH", NIX_DAEMON_SOCKET)


def _connect_error(path: str) -> OSError | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(path)
    except OSError as e:
        return e
    finally:
        s.close()
    return None


def check_nix_store() -> NoetherError | None:
    """Can this process build into the Nix store: its own (state dir writable,
    as Nix's ``auto`` store decides) or through a reachable nix-daemon?"""
    if shutil.which("nix-build") is None:
        return NoetherError("nix_missing", "nix-build is not installed: stage programs cannot be built",
                            hint="apt-get install nix-bin nix-setup-systemd")
    remote = os.environ.get("NIX_REMOTE", "")
    state = os.environ.get("NIX_STATE_DIR", NIX_STATE_DIR)
    own_store = remote in ("", "auto", "local") and os.access(state, os.R_OK | os.W_OK)
    if own_store:
        return None
    if remote == "local":
        return NoetherError("nix_store_unusable", f"NIX_REMOTE=local but {state} is not writable by {_user()}",
                            path=state, hint="run the service as the store's owner, or set NIX_REMOTE=daemon")
    path = _daemon_socket(remote)
    err = _connect_error(path)
    if err is None:
        return None
    why = {errno.EACCES: f"permission denied (is {_user()} in the group that owns the socket's directory, "
                         "nix-users on Debian?)",
           errno.ENOENT: "no such socket (is nix-daemon.socket enabled and started?)",
           errno.ECONNREFUSED: "connection refused (nix-daemon is not running)"}.get(
               err.errno or 0, err.strerror or str(err))
    lead = (f"the Nix store is not {_user()}'s to write ({state}) and " if remote in ("", "auto") else "")
    return NoetherError("nix_store_unusable", f"{lead}nix-daemon cannot be reached: {why}", path=path,
                        hint="run the daemon with NIX_REMOTE=daemon and the supplementary group nix-users "
                             "(`noether service install` sets both), with nix-daemon running")


def check_limits() -> NoetherError | None:
    """Is there a writable cgroup for per-run memory and process caps?"""
    if mechanisms().get("cgroup") is not None:
        return None
    own = _own_paths()
    where = own.get("") or own.get("name=systemd") or "?"
    v2 = (ROOT / "cgroup.controllers").exists()
    return NoetherError(
        "limits_unavailable",
        f"no writable cgroup for per-run memory and process limits (cgroup {'v2' if v2 else 'v1'}, "
        f"this process is in {where}): sandboxed stages would run without memory and pids caps",
        path=str(ROOT / where.lstrip("/")) if v2 else where,
        hint="run the daemon as a systemd service with Delegate=yes (`noether service install`; on cgroup v1 "
             "its ExecStartPre hands the service its memory and pids cgroups), or as root")


#: What a failed probe's message points at, and the fix.
_BWRAP_HINTS = (
    ("hostname", "a seccomp filter refuses sethostname (systemd's ProtectHostname=yes does): remove it from the "
                 "unit; the units `noether service install` writes do not set it"),
    ("max_user_namespaces", "/proc/sys is read-only here (in a container: systemd-nspawn needs "
                            "SYSTEMD_NSPAWN_API_VFS_WRITABLE=yes)"),
    ("namespace", "enable unprivileged user namespaces (sysctl user.max_user_namespaces > 0, "
                  "kernel.unprivileged_userns_clone=1) and let the unit create namespaces (no RestrictNamespaces=)"),
)


def check_sandbox(isolation: str = "auto") -> NoetherError | None:
    """Can bwrap build the sandbox every sandboxed stage needs (as this
    process, and as an unprivileged user when a root daemon starts sandboxes
    for its peers)? ``isolation: none`` needs no sandbox."""
    if isolation == "none":
        return None
    path = find_bwrap()
    if path is None:
        return NoetherError("isolation_unavailable", "bubblewrap (bwrap) is not installed: every sandboxed stage "
                            "would be refused", hint="apt-get install bubblewrap")
    probes: list[tuple[int | None, str]] = [(None, "")]
    if os.geteuid() == 0:
        probes.append((65534, " as an unprivileged user (the peers' and sandbox users' sandboxes)"))
    for uid, who in probes:
        ok, why = bwrap_works(path, as_uid=uid, as_gid=uid, fresh=True)
        if not ok:
            hint = next((h for key, h in _BWRAP_HINTS if key in why.lower()), "see `noether doctor`")
            return NoetherError("isolation_unavailable", f"bwrap ({path}) cannot build a sandbox{who}: {why}",
                                path=path, hint=hint)
    return None


def preflight_host(*, require_limits: bool = True, isolation: str = "auto") -> list[NoetherError]:
    """The problems that make this host unable to run sandboxed stages as
    configured; empty when it can. ``require_limits=False`` when the operator
    accepted running without cgroup limits."""
    problems = [check_nix_store(), check_sandbox(isolation)]
    if require_limits:
        problems.append(check_limits())
    return [p for p in problems if p is not None]


def refuse_if_unusable(*, require_limits: bool = True, isolation: str = "auto") -> None:
    """Raise one error naming every problem ``preflight_host`` finds."""
    problems = preflight_host(require_limits=require_limits, isolation=isolation)
    if not problems:
        return
    raise NoetherError("host_unusable", "the daemon cannot run stages on this host: "
                       + "; ".join(f"{p.message} [{p.code}]" for p in problems),
                       hint=" / ".join(p.hint for p in problems if p.hint) or None,
                       exit_code=EXIT_HOST_UNUSABLE,
                       details={"problems": [p.to_dict() for p in problems]})
