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
        columns = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
        if "requester_uid" not in columns:  # databases from before runs had an owner
            with write_txn(conn) as c:
                c.execute("ALTER TABLE runs ADD COLUMN requester_uid INTEGER")

    def start(self, run_id: str, composition_id: str, requester_uid: int | None = None) -> None:
        """``requester_uid``: the daemon peer who started it (None: an embedded run)."""
        with write_txn(self.conn) as c:
            c.execute(
                "INSERT INTO runs (run_id, composition_id, status, started_at, owner_pid, requester_uid)"
                " VALUES (?, ?, 'running', ?, ?, ?)",
                (run_id, composition_id, time.time(), os.getpid(), requester_uid),
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

    # ``visible_to``: a peer uid that may see only its own runs (None: all runs).
    @staticmethod
    def _mine(visible_to: int | None) -> tuple[str, tuple[Any, ...]]:
        return ("", ()) if visible_to is None else (" AND requester_uid = ?", (visible_to,))

    def get(self, run_id: str, *, visible_to: int | None = None) -> dict[str, Any] | None:
        mine, args = self._mine(visible_to)
        return self._row(self.conn.execute(f"SELECT {self._COLS} FROM runs WHERE run_id = ?{mine}",
                                           (run_id, *args)).fetchone())

    def latest(self, composition_id: str, *, visible_to: int | None = None) -> dict[str, Any] | None:
        mine, args = self._mine(visible_to)
        return self._row(
            self.conn.execute(
                f"SELECT {self._COLS} FROM runs WHERE composition_id = ?{mine} ORDER BY started_at DESC LIMIT 1",
                (composition_id, *args),
            ).fetchone()
        )

    def recent(self, limit: int = 20, *, visible_to: int | None = None) -> list[dict[str, Any]]:
        mine, args = self._mine(visible_to)
        rows = self.conn.execute(
            "SELECT run_id, composition_id, status, started_at, finished_at, spent_cents FROM runs"
            f" WHERE 1 = 1{mine} ORDER BY started_at DESC LIMIT ?",
            (*args, limit),
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
