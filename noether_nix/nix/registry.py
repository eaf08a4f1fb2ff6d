"""Which program was built for which (stage, runtime), with its GC root.

A table of the store database (``nix_programs``), so the daemon and CLI
share it; a hit means no nix-build call at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import msgspec

from noether_nix.store.db import connect, write_txn

SCHEMA = """
CREATE TABLE IF NOT EXISTS nix_programs (
    stage_id     TEXT NOT NULL,
    runtime      TEXT NOT NULL,
    program      TEXT NOT NULL,
    gc_root      TEXT NOT NULL,
    built_at     REAL NOT NULL,
    build_ms     INTEGER NOT NULL,
    PRIMARY KEY (stage_id, runtime)
);
"""


class ProgramRecord(msgspec.Struct, frozen=True):
    stage_id: str
    runtime: str
    program: str
    gc_root: str
    closure: list[str]
    build_ms: int


def pin(store_path: str, root: Path) -> bool:
    """Make ``root`` a GC root (a symlink Nix knows about) for ``store_path``."""
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(["nix-store", "--add-root", str(root), "--indirect", "--realise", store_path],
                              capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


class ProgramRegistry:
    def __init__(self, db: Path | sqlite3.Connection) -> None:
        self.conn = db if isinstance(db, sqlite3.Connection) else connect(db)
        self.conn.executescript(SCHEMA)
        columns = {r[1] for r in self.conn.execute("PRAGMA table_info(nix_programs)")}
        if "closure" not in columns:  # databases from before the closure was recorded
            with write_txn(self.conn) as c:
                c.execute("ALTER TABLE nix_programs ADD COLUMN closure TEXT NOT NULL DEFAULT '[]'")

    def get(self, stage_id: str, runtime: str) -> ProgramRecord | None:
        """The live record for (stage, runtime): its program must still be in the store."""
        row = self.conn.execute(
            "SELECT stage_id, runtime, program, gc_root, closure, build_ms FROM nix_programs "
            "WHERE stage_id = ? AND runtime = ?", (stage_id, runtime)
        ).fetchone()
        if row is None or not os.path.exists(row[2]):
            return None
        rec = ProgramRecord(row[0], row[1], row[2], row[3], json.loads(row[4]) or [row[2], runtime], row[5])
        if os.path.lexists(rec.gc_root) is False:
            # The root went missing (home moved, hand cleanup): pin the program again.
            pin(rec.program, Path(rec.gc_root))
        return rec

    def lookup(self, stage_id: str, runtime: str) -> str | None:
        rec = self.get(stage_id, runtime)
        return rec.program if rec else None

    def record(self, stage_id: str, runtime: str, program: str, gc_root: str, build_ms: int,
               closure: list[str] | None = None) -> None:
        with write_txn(self.conn) as c:
            c.execute(
                "INSERT OR REPLACE INTO nix_programs (stage_id, runtime, program, gc_root, built_at, build_ms, closure)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (stage_id, runtime, program, gc_root, time.time(), build_ms, json.dumps(closure or [])),
            )

    def programs(self) -> list[tuple[str, str, str]]:
        return [(r[0], r[1], r[2]) for r in self.conn.execute("SELECT stage_id, runtime, program FROM nix_programs")]

    def release(self, stage_id: str) -> int:
        """Drop a stage's GC roots so the garbage collector may reclaim its programs."""
        rows = self.conn.execute("SELECT gc_root FROM nix_programs WHERE stage_id = ?", (stage_id,)).fetchall()
        for (root,) in rows:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(root)
        with write_txn(self.conn) as c:
            c.execute("DELETE FROM nix_programs WHERE stage_id = ?", (stage_id,))
        return len(rows)
