"""Taking the cgroup subtree systemd delegates to the daemon (``Delegate=yes``).

cgroup v2: the service's cgroup is the delegated root (systemd marks it with
the ``user.delegate`` xattr and hands it to ``User=``). The "no internal
processes" rule forbids enabling controllers for children while the daemon
sits in it, so :func:`claim_v2` moves the daemon into a leaf (:data:`LEAF`)
and enables memory / pids / cpu for the subtree; per-run cgroups are then
created beside that leaf (``cgroups.RunCgroup``).

cgroup v1 (legacy and hybrid hosts): systemd puts a delegated service in
its own cgroup of every controller hierarchy but keeps those directories
root's (it never delegates v1 controllers to an unprivileged user).
:func:`grant_v1`, run as root just before the daemon
(``ExecStartPre=+noether service delegate``), hands the service's own memory
and pids cgroups to the service user: the rights v2 delegation gives
(create child cgroups, set their limits, move the service's processes into
them), never the service cgroup's own limits, nor a cgroup outside the unit.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from noether_nix.sandbox.cgroups import LEAF, ROOT, _own_paths

V1_CONTROLLERS = ("memory", "pids", "cpuacct")
# What systemd's own delegation chowns in a delegated cgroup (never the limit files).
_DELEGATED_FILES = (".", "cgroup.procs", "tasks", "cgroup.clone_children", "notify_on_release",
                    "cgroup.subtree_control", "cgroup.threads")

__all__ = ["LEAF", "claim_v2", "grant_v1", "is_delegated"]


def is_delegated(cgroup_dir: Path) -> bool:
    """systemd's mark on a cgroup it delegated (``Delegate=yes``, systemd >= 251)."""
    for attr in ("user.delegate", "trusted.delegate"):
        with contextlib.suppress(OSError):
            if os.getxattr(cgroup_dir, attr).strip() == b"1":
                return True
    return False


def claim_v2() -> Path | None:
    """On a v2 host, inside a cgroup systemd delegated to us: move this process
    into the leaf and enable the controllers for the subtree. Returns the
    delegated cgroup (where per-run cgroups go), or None when there is none
    (not v2, not delegated: a daemon started by hand stays where it is)."""
    own = _own_paths().get("")
    if own is None or not (ROOT / "cgroup.controllers").exists():
        return None
    base = ROOT / own.lstrip("/")
    if base.name == LEAF and is_delegated(base.parent):
        return base.parent  # claimed already (the daemon re-executed itself)
    if not is_delegated(base):
        return None
    leaf = base / LEAF
    try:
        leaf.mkdir(exist_ok=True)
        (leaf / "cgroup.procs").write_text(str(os.getpid()))
    except OSError:
        return None
    try:
        available = (base / "cgroup.controllers").read_text().split()
    except OSError:
        available = []
    for ctl in ("memory", "pids", "cpu"):
        if ctl in available:
            # One by one: a controller the parent withholds must not cost the others.
            with contextlib.suppress(OSError):
                (base / "cgroup.subtree_control").write_text(f"+{ctl}")
    return base


def grant_v1(uid: int, gid: int) -> list[str]:
    """As root, in the service's cgroups (ExecStartPre=+): give the service's own
    v1 memory / pids / cpuacct cgroups to ``uid``:``gid``. Only a cgroup systemd
    made for this unit qualifies (its path equals the unit's path in systemd's
    own hierarchy, and that is not the root). Returns the directories granted."""
    own = _own_paths()
    unit = own.get("name=systemd") or own.get("")
    if not unit or unit == "/":
        return []
    unified = ROOT / "unified" / unit.lstrip("/")
    if unified.is_dir() and not is_delegated(unified):
        return []  # systemd did not delegate this unit's cgroup: hand out nothing
    granted: list[str] = []
    for ctl in V1_CONTROLLERS:
        if own.get(ctl) != unit:
            continue
        d = ROOT / ctl / unit.lstrip("/")
        if not d.is_dir():
            continue
        for name in _DELEGATED_FILES:
            with contextlib.suppress(FileNotFoundError):
                os.chown(d / name, uid, gid, follow_symlinks=False)
        granted.append(str(d))
    return granted
