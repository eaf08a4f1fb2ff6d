"""What this host offers (sandbox, limits, Nix): ``noether doctor`` and the daemon's health."""

from __future__ import annotations

import os
from typing import Any

from noether_nix.errors import NoetherError
from noether_nix.nix.doctor import describe
from noether_nix.sandbox import landlock
from noether_nix.sandbox.bwrap import bwrap_version, bwrap_works, find_bwrap
from noether_nix.sandbox.cgroups import mechanisms
from noether_nix.sandbox.identity import SANDBOX_GROUP, USER_PREFIX, check_range
from noether_nix.sandbox.launch import limits_allowed_missing
from noether_nix.sandbox.profile import load_profile
from noether_nix.sandbox.seccomp import compile_filter


def describe_sandbox() -> dict[str, Any]:
    profile = load_profile()
    path = find_bwrap()
    out: dict[str, Any] = {"bwrap": path, "usable": False}
    if path:
        ok, why = bwrap_works(path, fresh=True)
        out.update({"version": bwrap_version(path), "usable": ok, "error": None if ok else why})
        if ok and os.geteuid() == 0:
            # A root daemon runs other users' sandboxes as them (unprivileged user namespaces).
            peer_ok, peer_why = bwrap_works(path, as_uid=65534, fresh=True)
            out["peer_sandboxes"] = True if peer_ok else f"unavailable: {peer_why}"
    try:
        compile_filter(["ptrace"])
        out["seccomp"] = True
    except Exception as e:  # report, don't crash: this is a diagnostic
        out["seccomp"] = f"unavailable: {e}"
    uids = profile.sandbox_uids
    users: dict[str, Any] = {
        "range": f"{USER_PREFIX}0…{uids.count - 1} (uids {uids.base}–{uids.base + uids.count - 1}, "
                 f"group {SANDBOX_GROUP})",
        "used_by_this_process": os.geteuid() == 0,
    }
    try:
        check_range(uids)
        users["present"] = True
    except NoetherError as e:
        users.update(present=False, error=e.message, hint=e.hint)
    out["sandbox_users"] = users
    limits = mechanisms()
    if os.geteuid() == 0:  # root's sandboxes run as dedicated uids: RLIMIT_NPROC counts one sandbox
        limits["rlimits"] = [*limits["rlimits"], "RLIMIT_NPROC"]  # type: ignore[misc]
        limits["pids"] = limits["pids"] or "RLIMIT_NPROC on the dedicated sandbox uid"
    limits["when_missing"] = "allowed by the operator" if limits_allowed_missing(profile) else "refused"
    limits["abstract_sockets_and_signals"] = ("Landlock scope (per sandbox)" if landlock.available()
                                              else "seccomp: no AF_UNIX sockets in Network sandboxes")
    out["limits"] = limits
    return out


def describe_nix() -> dict[str, Any]:
    return describe()
