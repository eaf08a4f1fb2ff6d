"""Which program was built for which (stage, runtime), with its GC root.

A table of the store database (``nix_programs``), so the daemon and CLI
share it; a hit means no nix-build call at all.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path

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


class ProgramRegistry:
    def __init__(self, db: Path | sqlite3.Connection) -> None:
        self.conn = db if isinstance(db, sqlite3.Connection) else connect(db)
        self.conn.executescript(SCHEMA)

    def lookup(self, stage_id: str, runtime: str) -> str | None:
        row = self.conn.execute(
            "SELECT program FROM nix_programs WHERE stage_id = ? AND runtime = ?", (stage_id, runtime)
        ).fetchone()
        if row is None or not os.path.exists(row[0]):
            return None
        return str(row[0])

    def record(self, stage_id: str, runtime: str, program: str, gc_root: str, build_ms: int) -> None:
        with write_txn(self.conn) as c:
            c.execute(
                "INSERT OR REPLACE INTO nix_programs VALUES (?, ?, ?, ?, ?, ?)",
                (stage_id, runtime, program, gc_root, time.time(), build_ms),
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
