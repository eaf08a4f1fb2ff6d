"""What `noether doctor` reports about Nix: tools, store, runtime source, runtimes."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

from noether_nix.errors import NoetherError
from noether_nix.nix.runtime import BIN_NAMES, runtime_roots_dir, runtime_source


def _version(exe: str) -> str:
    try:
        return subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"error: {e}"


def _nixpkgs_on_path() -> str | None:
    """Where ``<nixpkgs>`` resolves, if anywhere (only the nixpkgs source needs it)."""
    exe = shutil.which("nix-instantiate")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, "--find-file", "nixpkgs"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def describe() -> dict[str, Any]:
    """A JSON-able picture of the Nix layer; never raises (it is a diagnostic)."""
    out: dict[str, Any] = {}
    nix_build = shutil.which("nix-build")
    out["nix_build"] = nix_build
    out["version"] = _version(nix_build) if nix_build else None
    out["store"] = os.path.isdir("/nix/store")
    out["store_writable"] = os.access("/nix/store", os.W_OK) or bool(os.environ.get("NIX_REMOTE"))
    out["patchelf"] = shutil.which("patchelf")
    out["bwrap"] = shutil.which("bwrap")
    try:
        out["runtime_source"] = runtime_source()
    except NoetherError as e:
        out["runtime_source"] = {"error": e.to_dict()}
    out["nixpkgs"] = _nixpkgs_on_path()
    roots = runtime_roots_dir()
    out["runtime_roots"] = str(roots)
    runtimes: dict[str, str] = {}
    for lang, binary in BIN_NAMES.items():
        for root in sorted(roots.glob(f"runtime-{lang}-*")) + sorted(roots.glob("nixpkgs-*")):
            target = os.path.realpath(root)
            if os.path.exists(os.path.join(target, "bin", binary)):
                runtimes[lang] = target
    out["runtimes"] = runtimes  # only those built so far; `noether warmup` builds the rest
    problems = []
    if not nix_build:
        problems.append("nix-build is not installed: apt-get install nix-bin (./dev setup)")
    elif not out["store_writable"]:
        problems.append("the Nix store is not writable: run as root or through a nix-daemon")
    if out["runtime_source"] == "host-import" and not out["patchelf"]:
        problems.append("patchelf is missing: host-import runtimes cannot be built (apt-get install patchelf)")
    if out["runtime_source"] == "nixpkgs" and not out["nixpkgs"]:
        problems.append("NOETHER_RUNTIME_SOURCE=nixpkgs but <nixpkgs> is not on NIX_PATH")
    out["ok"] = not problems
    out["problems"] = problems
    return out
