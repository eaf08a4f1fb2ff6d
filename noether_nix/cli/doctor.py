"""``noether doctor``: what this host offers (sandbox, limits, Nix, store)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("doctor", help="report sandbox, limits and Nix status", parents=[common])
    p.set_defaults(handler=cmd_doctor, command="doctor")


def cmd_doctor(args: argparse.Namespace) -> Any:
    from noether_nix.paths import db_path, noether_home
    from noether_nix.service.doctor import describe_nix, describe_sandbox

    return {"home": str(noether_home()), "database": str(db_path()), "sandbox": describe_sandbox(),
            "nix": describe_nix()}
