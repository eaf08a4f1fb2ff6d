"""Finding the processes a test started, by cgroup, never by scanning /proc.

Every sandbox this process starts sits in a cgroup named
``noether-<this pid>-…`` under this process's own cgroup(s); other tests,
helpers and daemons on the machine use their own pid in the name.
"""

from __future__ import annotations

import os
from pathlib import Path

from noether_nix.sandbox.cgroups import ROOT, _own_paths


def own_sandbox_cgroups() -> dict[Path, list[int]]:
    """This process's sandbox cgroups and the pids in each."""
    own = _own_paths()
    bases = {ROOT / ctl / path.lstrip("/") for ctl, path in own.items() if ctl in ("memory", "pids")}
    if "" in own and (ROOT / "cgroup.controllers").exists():
        bases.add(ROOT / own[""].lstrip("/"))
    found: dict[Path, list[int]] = {}
    for base in bases:
        for d in base.glob(f"noether-{os.getpid()}-*"):
            try:
                found[d] = [int(p) for p in (d / "cgroup.procs").read_text().split()]
            except OSError:
                continue  # removed meanwhile
    return found


def own_sandbox_pids() -> set[int]:
    return {pid for pids in own_sandbox_cgroups().values() for pid in pids}


def running(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie has: it runs no code)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
