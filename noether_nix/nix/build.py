"""Running nix-build: offline, bounded, with classified failures."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import IO

from noether_nix.errors import NoetherError
from noether_nix.settings import settings

NIX_DIR = Path(__file__).resolve().parent / "expr"
LOG_CAP = 64 * 1024  # bytes of nix-build's stderr we keep
BUILD_LOG_CAP = 1024 * 1024  # bytes a builder may log before Nix kills it

# Every build: no substituters (nothing waits on the network), Nix's own
# build sandbox on, metadata fsync off (the store DB is still synced). Passed
# per call because Debian's /etc/nix/nix.conf says `sandbox = false`.
OFFLINE_OPTIONS = [
    "--option", "substituters", "",
    "--option", "sandbox", "true",
    "--option", "fsync-metadata", "false",
    "--option", "build-users-group", "nixbld",
    "--option", "max-build-log-size", str(BUILD_LOG_CAP),
    "--option", "log-lines", "25",
]

# Marker the stage builder prints when the stage's code does not compile.
CODE_INVALID_MARKER = "noether: stage code does not compile"

_slots_lock = threading.Lock()
_slots_by_size: dict[int, threading.BoundedSemaphore] = {}


def _slots() -> threading.BoundedSemaphore:
    """The nix-build processes that may run at once in this process (settings ``nix.build_concurrency``)."""
    n = max(1, settings().nix.build_concurrency)
    with _slots_lock:
        return _slots_by_size.setdefault(n, threading.BoundedSemaphore(n))


def nix_expr(name: str) -> Path:
    """A Nix expression shipped with the package (nix/*.nix in the repo)."""
    for base in (Path(__file__).resolve().parents[2] / "nix", NIX_DIR):
        p = base / name
        if p.is_file():
            return p
    raise NoetherError("nix_expression_missing", f"Nix expression {name} is not installed", path=name)


def nix_tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise NoetherError("nix_missing", f"{name} is not installed (Nix is needed to build stage programs)",
                           hint="apt-get install nix-bin (./dev setup)")
    return exe


def nix_build(expr: Path, args: dict[str, str], arg_strs: dict[str, str], out_link: Path,
              *, timeout_s: float | None = None) -> str:
    """Build ``expr`` and return its store path; ``out_link`` becomes a GC root. A build
    may take ``timeout_s`` (default: settings ``nix.build_timeout_secs``)."""
    # The spawner thread's module: loaded by what starts processes.
    from noether_nix.proc import cancelled, supervised

    if timeout_s is None:
        timeout_s = settings().nix.build_timeout_secs
    cmd = [nix_tool("nix-build"), str(expr), "--no-build-output", "-o", str(out_link), *OFFLINE_OPTIONS,
           "--option", "timeout", str(int(timeout_s)), "--option", "max-silent-time", str(int(timeout_s))]
    for k, v in args.items():
        cmd += ["--arg", k, v]
    for k, v in arg_strs.items():
        cmd += ["--argstr", k, v]
    out_link.parent.mkdir(parents=True, exist_ok=True)
    # Own session, killed with us (even by SIGKILL), its group killed if the run it builds for is cancelled.
    with _slots(), tempfile.TemporaryFile() as err, \
            supervised(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err) as proc:
        try:
            # Nix's own timeout fires first; ours is the backstop for evaluation hangs.
            stdout: bytes = proc.communicate(timeout=timeout_s + 30)[0]
        except subprocess.TimeoutExpired:
            _kill_session(proc)
            raise NoetherError("nix_build_timeout", f"nix-build did not finish within {timeout_s:g}s",
                               path=str(expr), hint="raise the build timeout, or look for a hanging builder") from None
        log = _tail(err)
    if cancelled():
        raise NoetherError("cancelled", f"the build of {expr.name} was cancelled", path=str(expr), exit_code=3)
    if proc.returncode != 0:
        raise classify_failure(log, expr)
    lines = stdout.decode().strip().splitlines()
    if not lines:
        raise NoetherError("nix_build_failed", f"nix-build of {expr.name} printed no store path",
                           details={"log_tail": log[-4000:]})
    return lines[-1]


def _kill_session(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(f: IO[bytes]) -> str:
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - LOG_CAP))
    return f.read().decode("utf-8", "replace")


_BUILDER_LINE = re.compile(r"^\s*> ?(.*)$")


def builder_log(log: str) -> list[str]:
    """The builder's own last log lines, as Nix quotes them after a failure."""
    return [m.group(1) for line in log.splitlines() if (m := _BUILDER_LINE.match(line))]


def classify_failure(log: str, expr: Path) -> NoetherError:
    low = log.lower()
    tail = "\n".join(log.strip().splitlines()[-30:])
    details = {"log_tail": tail}
    if "no space left on device" in low:
        return NoetherError("nix_out_of_disk", "the Nix store is out of disk space",
                            hint="free space, e.g. nix-collect-garbage -d", details=details)
    if ("permission denied" in low or "read-only file system" in low) and "/nix/" in low:
        return NoetherError("nix_store_not_writable", "the Nix store is not writable by this user",
                            hint="run as root, or through a nix-daemon", details=details)
    if "cannot connect to" in low and "daemon" in low:
        return NoetherError("nix_daemon_unreachable", "cannot reach the Nix daemon",
                            hint="start nix-daemon, or unset NIX_REMOTE for a single-user store", details=details)
    if "timed out after" in low:
        return NoetherError("nix_build_timeout", f"the build of {expr.name} timed out", details=details)
    if "exceeded the maximum log size" in low:
        return NoetherError("nix_build_failed", f"the build of {expr.name} logged more than {BUILD_LOG_CAP} bytes",
                            details=details)
    if "file 'nixpkgs' was not found" in low or "getting flake" in low or "unable to download" in low:
        return NoetherError("nixpkgs_unavailable", "nixpkgs is not reachable from this machine",
                            hint="use NOETHER_RUNTIME_SOURCE=host-import (the offline default), or set NIX_PATH "
                                 "to a local nixpkgs checkout", details=details)
    builder = builder_log(log)
    if CODE_INVALID_MARKER in log:
        said = [b.strip() for b in builder if b.strip() and CODE_INVALID_MARKER not in b]
        # The interpreter's own verdict ("SyntaxError: …", "syntax error near …"), else its last word.
        reason = next((b for b in reversed(said) if "error" in b.lower()), said[-1] if said else "")
        return NoetherError("stage_code_invalid", f"the stage's code does not compile: {reason}",
                            details={"log_tail": "\n".join(builder)})
    last = next((b for b in reversed(builder) if b.strip()), "")
    if not last:
        last = next((ln for ln in reversed(log.strip().splitlines()) if ln.strip().startswith("error:")),
                    log.strip().splitlines()[-1] if log.strip() else "no output")
    return NoetherError("nix_build_failed", f"nix-build of {expr.name} failed: {last.strip()}", details=details)
