"""Running nix-build: offline, bounded, with classified failures."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from noether_nix.errors import NoetherError

NIX_DIR = Path(__file__).resolve().parent / "expr"
# Every build: no substituters (nothing waits on the network), Nix's own
# build sandbox on, metadata fsync off (the store DB is still synced).
OFFLINE_OPTIONS = [
    "--option", "substituters", "",
    "--option", "sandbox", "true",
    "--option", "fsync-metadata", "false",
    "--option", "build-users-group", "nixbld",
]
LOG_CAP = 64 * 1024


def nix_expr(name: str) -> Path:
    """A Nix expression shipped with the package (nix/*.nix in the repo)."""
    for base in (Path(__file__).resolve().parents[2] / "nix", NIX_DIR):
        p = base / name
        if p.is_file():
            return p
    raise NoetherError("nix_expression_missing", f"Nix expression {name} is not installed", path=name)


def nix_build(expr: Path, args: dict[str, str], arg_strs: dict[str, str], out_link: Path,
              *, timeout_s: float = 600) -> str:
    """Build ``expr`` and return its store path; ``out_link`` becomes a GC root."""
    exe = shutil.which("nix-build")
    if exe is None:
        raise NoetherError("nix_missing", "nix-build is not installed", hint="apt-get install nix-bin (./dev setup)")
    cmd = [exe, str(expr), "--no-build-output", "-o", str(out_link), *OFFLINE_OPTIONS]
    for k, v in args.items():
        cmd += ["--arg", k, v]
    for k, v in arg_strs.items():
        cmd += ["--argstr", k, v]
    out_link.parent.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s,
                              env={**os.environ, "NIX_REMOTE": os.environ.get("NIX_REMOTE", "")})
    except subprocess.TimeoutExpired:
        raise NoetherError("nix_build_timeout", f"nix-build did not finish within {timeout_s:g}s",
                           path=str(expr)) from None
    log = proc.stderr[-LOG_CAP:].decode("utf-8", "replace")
    if proc.returncode != 0:
        raise classify_failure(log, expr)
    return proc.stdout.decode().strip().splitlines()[-1]


def classify_failure(log: str, expr: Path) -> NoetherError:
    low = log.lower()
    tail = "\n".join(log.strip().splitlines()[-15:])
    if "no space left on device" in low:
        return NoetherError("nix_out_of_disk", "the Nix store is out of disk space",
                            hint="free space, e.g. nix-collect-garbage -d", details={"log_tail": tail})
    if "permission denied" in low and "/nix/" in low:
        return NoetherError("nix_store_not_writable", "the Nix store is not writable by this user",
                            hint="run as root, or through a nix-daemon", details={"log_tail": tail})
    if "cannot connect to" in low and "daemon" in low:
        return NoetherError("nix_daemon_unreachable", "cannot reach the Nix daemon", details={"log_tail": tail})
    return NoetherError("nix_build_failed", f"nix-build of {expr.name} failed: {tail.splitlines()[-1] if tail else 'no output'}",
                        details={"log_tail": tail})
