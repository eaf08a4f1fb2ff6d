"""Finding the processes a test started, by cgroup, never by scanning /proc.

Every sandbox a process starts sits in a cgroup named ``noether-<its pid>-…``
under that process's own cgroup(s) (for a daemon the test started: under the
daemon's); other tests, helpers and daemons on the machine use their own pid
in the name.
"""

from __future__ import annotations

import os
from pathlib import Path

from noether_nix.sandbox.cgroups import ROOT, _own_paths


def _bases() -> set[Path]:
    own = _own_paths()
    bases = {ROOT / ctl / path.lstrip("/") for ctl, path in own.items() if ctl in ("memory", "pids")}
    if "" in own and (ROOT / "cgroup.controllers").exists():
        bases.add(ROOT / own[""].lstrip("/"))
    return bases


def sandbox_cgroups(creator: int | None = None) -> dict[Path, list[int]]:
    """The sandbox cgroups ``creator`` (default: this process; a daemon a test
    started shares the test's cgroup) made, and the pids in each."""
    found: dict[Path, list[int]] = {}
    for base in _bases():
        for d in base.glob(f"noether-{creator or os.getpid()}-*"):
            try:
                found[d] = [int(p) for p in (d / "cgroup.procs").read_text().split()]
            except OSError:
                continue  # removed meanwhile
    return found


def own_sandbox_cgroups() -> dict[Path, list[int]]:
    return sandbox_cgroups()


def sandbox_pids(creator: int | None = None) -> set[int]:
    return {pid for pids in sandbox_cgroups(creator).values() for pid in pids}


def own_sandbox_pids() -> set[int]:
    return sandbox_pids()


def marked_sandbox_pids(marker: str, creator: int | None = None) -> list[int]:
    """Pids in ``creator``'s sandbox cgroups whose command line holds ``marker``."""
    found = []
    for pid in sandbox_pids(creator):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited. A zombie (``Z``) has, and so has
    one being reaped this very moment (``X``, dead: its parent took its status); neither
    runs code. Under load the ``X`` window is wide enough for a test to see."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")
