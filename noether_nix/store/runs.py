"""Stored runs and their traces, including failed and cancelled ones."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from typing import Any

import msgspec

from noether_nix.store.db import write_txn

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id          TEXT PRIMARY KEY,
    composition_id  TEXT NOT NULL,
    status          TEXT NOT NULL,
    started_at      REAL NOT NULL,
    finished_at     REAL,
    spent_cents     INTEGER NOT NULL DEFAULT 0,
    trace           TEXT,
    events          TEXT,
    owner_pid       INTEGER
);
CREATE INDEX IF NOT EXISTS runs_composition ON runs(composition_id, started_at);
CREATE INDEX IF NOT EXISTS runs_started ON runs(started_at);
"""


class RunStore:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        conn.executescript(SCHEMA)

    def start(self, run_id: str, composition_id: str) -> None:
        with write_txn(self.conn) as c:
            c.execute(
                "INSERT INTO runs (run_id, composition_id, status, started_at, owner_pid)"
                " VALUES (?, ?, 'running', ?, ?)",
                (run_id, composition_id, time.time(), os.getpid()),
            )

    def finish(
        self, run_id: str, status: str, trace: dict[str, Any], events: list[Any], spent_cents: int
    ) -> None:
        with write_txn(self.conn) as c:
            c.execute(
                "UPDATE runs SET status = ?, finished_at = ?, trace = ?, events = ?, spent_cents = ?"
                " WHERE run_id = ?",
                # msgspec: a 100,000-item map's trace encodes in a fraction of json.dumps' time.
                (status, time.time(), msgspec.json.encode(trace).decode(),
                 msgspec.json.encode(events).decode(), spent_cents, run_id),
            )

    def _row(self, row: tuple[Any, ...] | None) -> dict[str, Any] | None:
        if row is None:
            return None
        run_id, cid, status, started, finished, spent, trace, events = row
        return {
            "run_id": run_id,
            "composition_id": cid,
            "status": status,
            "started_at": started,
            "finished_at": finished,
            "spent_cents": spent,
            "trace": json.loads(trace) if trace else None,
            "events": json.loads(events) if events else [],
        }

    _COLS = "run_id, composition_id, status, started_at, finished_at, spent_cents, trace, events"

    def get(self, run_id: str) -> dict[str, Any] | None:
        return self._row(self.conn.execute(f"SELECT {self._COLS} FROM runs WHERE run_id = ?", (run_id,)).fetchone())

    def latest(self, composition_id: str) -> dict[str, Any] | None:
        return self._row(
            self.conn.execute(
                f"SELECT {self._COLS} FROM runs WHERE composition_id = ? ORDER BY started_at DESC LIMIT 1",
                (composition_id,),
            ).fetchone()
        )

    def recent(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT run_id, composition_id, status, started_at, finished_at, spent_cents FROM runs"
            " ORDER BY started_at DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [
            {"run_id": r[0], "composition_id": r[1], "status": r[2], "started_at": r[3],
             "finished_at": r[4], "spent_cents": r[5]}
            for r in rows
        ]

    def mark_interrupted(self) -> int:
        """Runs left 'running' by a process that died are marked, not lost."""
        with write_txn(self.conn) as c:
            rows = c.execute("SELECT run_id, owner_pid FROM runs WHERE status = 'running'").fetchall()
            dead = [rid for rid, pid in rows if pid is None or not _alive(pid)]
            for rid in dead:
                c.execute(
                    "UPDATE runs SET status = 'interrupted', finished_at = ? WHERE run_id = ?",
                    (time.time(), rid),
                )
            return len(dead)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
