"""What this host offers (sandbox, limits, Nix): ``noether doctor`` and the daemon's health."""

from __future__ import annotations

import os
from typing import Any


def describe_sandbox() -> dict[str, Any]:
    from noether_nix.sandbox.bwrap import bwrap_version, bwrap_works, find_bwrap
    from noether_nix.sandbox.cgroups import mechanisms

    path = find_bwrap()
    out: dict[str, Any] = {"bwrap": path, "usable": False}
    if path:
        ok, why = bwrap_works(path)
        out.update({"version": bwrap_version(path), "usable": ok, "error": None if ok else why})
        if ok and os.geteuid() == 0:
            # A root daemon runs other users' sandboxes as them (unprivileged user namespaces).
            peer_ok, peer_why = bwrap_works(path, as_uid=65534)
            out["peer_sandboxes"] = True if peer_ok else f"unavailable: {peer_why}"
    try:
        from noether_nix.sandbox.seccomp import compile_filter

        compile_filter(["ptrace"])
        out["seccomp"] = True
    except Exception as e:  # report, don't crash: this is a diagnostic
        out["seccomp"] = f"unavailable: {e}"
    out["limits"] = mechanisms()
    return out


def describe_nix() -> dict[str, Any]:
    from noether_nix.nix.doctor import describe

    return describe()
