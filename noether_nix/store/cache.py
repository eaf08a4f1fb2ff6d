"""Persistent pure-stage cache: (StageId, input hash) → output (spec §8.2).

Bounded by entry count with least-recently-used eviction. Only successful
outputs of Pure stages are ever written; the engine decides eligibility.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from noether_nix.store.db import write_txn

SCHEMA = """
CREATE TABLE IF NOT EXISTS pure_cache (
    stage_id    TEXT NOT NULL,
    input_hash  TEXT NOT NULL,
    output      TEXT NOT NULL,
    last_used   REAL NOT NULL,
    PRIMARY KEY (stage_id, input_hash)
);
CREATE INDEX IF NOT EXISTS pure_cache_lru ON pure_cache(last_used);
"""

_MISS = object()


class PureCache:
    def __init__(self, conn: sqlite3.Connection, *, max_entries: int = 100_000) -> None:
        self.conn = conn
        self.max_entries = max_entries
        conn.executescript(SCHEMA)

    def get(self, stage_id: str, input_hash: str) -> tuple[bool, Any]:
        row = self.conn.execute(
            "SELECT output FROM pure_cache WHERE stage_id = ? AND input_hash = ?", (stage_id, input_hash)
        ).fetchone()
        if row is None:
            return False, None
        # Touch for LRU; a lost race here only affects eviction order.
        self.conn.execute(
            "UPDATE pure_cache SET last_used = ? WHERE stage_id = ? AND input_hash = ?",
            (time.time(), stage_id, input_hash),
        )
        return True, json.loads(row[0])

    def put(self, stage_id: str, input_hash: str, output: Any) -> None:
        with write_txn(self.conn) as c:
            c.execute(
                "INSERT OR REPLACE INTO pure_cache (stage_id, input_hash, output, last_used) VALUES (?, ?, ?, ?)",
                (stage_id, input_hash, json.dumps(output, ensure_ascii=False), time.time()),
            )
            (n,) = c.execute("SELECT count(*) FROM pure_cache").fetchone()
            if n > self.max_entries:
                c.execute(
                    "DELETE FROM pure_cache WHERE rowid IN "
                    "(SELECT rowid FROM pure_cache ORDER BY last_used LIMIT ?)",
                    (n - self.max_entries,),
                )

    def evict(self, stage_id: str | None = None) -> int:
        with write_txn(self.conn) as c:
            if stage_id is None:
                cur = c.execute("DELETE FROM pure_cache")
            else:
                cur = c.execute("DELETE FROM pure_cache WHERE stage_id = ?", (stage_id,))
            return cur.rowcount

    def size(self) -> int:
        (n,) = self.conn.execute("SELECT count(*) FROM pure_cache").fetchone()
        return int(n)
