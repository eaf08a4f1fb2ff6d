"""Python ``# requires: name==version`` lines: wheels fetched once, then offline.

The wheels are downloaded on the host with pip (binary only, for the
runtime's Python), added to the store as fixed-output paths (sha256), and
recorded with their hashes; the stage's derivation unpacks them without any
network. A recorded requirement set is never fetched again.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from noether_nix.errors import NoetherError
from noether_nix.nix.build import nix_tool
from noether_nix.settings import settings
from noether_nix.store.db import write_txn

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_VERSION = re.compile(r"^[A-Za-z0-9.+!-]+$")
_TRUE = {"1", "true", "yes", "on"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS nix_wheels (
    requirements TEXT NOT NULL,
    python       TEXT NOT NULL,
    wheels       TEXT NOT NULL,
    fetched_at   REAL NOT NULL,
    PRIMARY KEY (requirements, python)
);
"""


class Wheel(msgspec.Struct, frozen=True):
    filename: str
    sha256: str
    store_path: str


def parse_requirements(code: str, *, allow_unpinned: bool | None = None) -> list[str]:
    """The pins of the first ``# requires:`` line (upstream's rule), strictly checked.

    Unlike upstream, which drops bad entries with a warning, a malformed entry
    is an error, and so is an unpinned one unless settings ``nix.allow_unpinned_pip``
    (``$NOETHER_ALLOW_UNPINNED_PIP``).
    """
    if allow_unpinned is None:
        allow_unpinned = settings().nix.allow_unpinned_pip
    line = next((ln.strip()[len("# requires:"):] for ln in code.splitlines()
                 if ln.strip().startswith("# requires:") and ln.strip()[len("# requires:"):].strip()), None)
    if line is None:
        return []
    pins = []
    for entry in (e.strip() for e in line.split(",")):
        if not entry:
            continue
        name, sep, version = entry.partition("==")
        if not sep:
            if not allow_unpinned:
                raise NoetherError("unpinned_requirement", f"requirement {entry!r} is not pinned (write {entry}==VERSION)",
                                   path=entry, hint="pin it, or set NOETHER_ALLOW_UNPINNED_PIP=1")
            if not _NAME.match(entry):
                raise NoetherError("invalid_requirement", f"requirement {entry!r} is not a package name", path=entry)
            pins.append(entry)
            continue
        if not _NAME.match(name) or not _VERSION.match(version):
            raise NoetherError("invalid_requirement", f"requirement {entry!r} is not name==version", path=entry,
                               hint="names use [A-Za-z0-9_.-], versions [A-Za-z0-9.+!-]")
        pins.append(f"{name}=={version}")
    return pins


def _runtime_python_tag(interpreter: str) -> str:
    out = subprocess.run([interpreter, "-S", "-c", "import sys; print('%d%d' % sys.version_info[:2])"],
                         capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise NoetherError("runtime_broken", f"{interpreter} did not start: {out.stderr.strip()}")
    return out.stdout.strip()


def ensure_wheels(pins: list[str], interpreter: str, conn: sqlite3.Connection) -> list[Wheel]:
    """Store paths of the wheels for ``pins`` (and their dependencies), fetched once."""
    if not pins:
        return []
    conn.executescript(SCHEMA)
    tag = _runtime_python_tag(interpreter)
    key = ", ".join(sorted(pins))
    row = conn.execute("SELECT wheels FROM nix_wheels WHERE requirements = ? AND python = ?", (key, tag)).fetchone()
    if row is not None:
        wheels = msgspec.json.decode(row[0], type=list[Wheel])
        if all(os.path.exists(w.store_path) for w in wheels):
            return wheels
    wheels = _fetch(pins, tag)
    with write_txn(conn) as c:
        c.execute("INSERT OR REPLACE INTO nix_wheels VALUES (?, ?, ?, ?)",
                  (key, tag, msgspec.json.encode(wheels).decode(), time.time()))
    return wheels


def _platform_args() -> list[str]:
    """manylinux tags up to this machine's glibc (the host-imported runtime
    links against it); many current wheels (pyarrow) are manylinux_2_28 only."""
    import platform

    arch = platform.machine()
    glibc = os.confstr("CS_GNU_LIBC_VERSION") or "glibc 2.17"
    minor = int(glibc.split()[-1].split(".")[1])
    tags = ["manylinux2014_" + arch, *(f"manylinux_2_{m}_{arch}" for m in range(17, minor + 1)), "any"]
    return [arg for t in tags for arg in ("--platform", t)]


def _fetch(pins: list[str], tag: str) -> list[Wheel]:
    # The spawner thread's module: loaded by what starts processes.
    from noether_nix.proc import run as supervised_run

    with tempfile.TemporaryDirectory(prefix="noether-wheels-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-cache-dir",
               "--only-binary=:all:", "--python-version", tag[0] + "." + tag[1:], "--implementation", "cp",
               "--abi", f"cp{tag}", *_platform_args(), "-d", tmp, *pins]
        try:  # killed with the daemon, and when the run it fetches for is cancelled
            proc = supervised_run(cmd, timeout=300)
        except subprocess.TimeoutExpired:
            raise NoetherError("requirements_fetch_failed", "pip download did not finish within 300s") from None
        if proc.returncode != 0:
            stderr = proc.stderr.decode("utf-8", "replace")
            last = (stderr.strip().splitlines() or ["no output"])[-1]
            raise NoetherError("requirements_fetch_failed", f"cannot fetch wheels for {', '.join(pins)}: {last}",
                               hint="only binary wheels are used; check the pins and the index (PIP_INDEX_URL)",
                               details={"stderr_tail": stderr[-4000:]})
        wheels = []
        for path in sorted(Path(tmp).glob("*.whl")):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            added = subprocess.run([nix_tool("nix-store"), "--add-fixed", "sha256", str(path)],
                                   capture_output=True, text=True, timeout=120)
            if added.returncode != 0:
                raise NoetherError("nix_store_not_writable", f"cannot add {path.name} to the store: "
                                   f"{added.stderr.strip()}")
            wheels.append(Wheel(path.name, digest, added.stdout.strip()))
        return wheels
