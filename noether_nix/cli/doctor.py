"""``noether doctor``: what this host offers (sandbox, limits, Nix, store)."""

from __future__ import annotations

import argparse
from typing import Any

from noether_nix.paths import db_path, noether_home


def register(sub: Any) -> None:
    p = sub.add_parser("doctor", help="report sandbox, limits and Nix status")
    p.set_defaults(handler=cmd_doctor, command="doctor")


def describe_sandbox() -> dict[str, Any]:
    from noether_nix.sandbox.bwrap import bwrap_version, bwrap_works, find_bwrap
    from noether_nix.sandbox.cgroups import mechanisms

    path = find_bwrap()
    out: dict[str, Any] = {"bwrap": path, "usable": False}
    if path:
        ok, why = bwrap_works(path)
        out.update({"version": bwrap_version(path), "usable": ok, "error": None if ok else why})
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


def cmd_doctor(args: argparse.Namespace) -> Any:
    return {"home": str(noether_home()), "database": str(db_path()), "sandbox": describe_sandbox(),
            "nix": describe_nix()}
