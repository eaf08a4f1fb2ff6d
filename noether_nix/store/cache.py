"""Persistent pure-stage cache: (StageId, input hash) → output (spec §8.2).

Bounded by entry count with least-recently-used eviction. Only successful
outputs of Pure stages are ever written; the engine decides eligibility.

Entries live in namespaces: whoever may change the store (embedded runs, the
daemon's writers) shares one, ``WRITERS``; every other peer of a daemon has
its own (``peer_namespace``), so it is never served an output computed for
someone else, nor can it plant one for them.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from noether_nix.store.db import write_txn

#: The namespace of embedded runs and of the daemon's writers.
WRITERS = ""

SCHEMA = """
CREATE TABLE IF NOT EXISTS pure_cache (
    namespace   TEXT NOT NULL,
    stage_id    TEXT NOT NULL,
    input_hash  TEXT NOT NULL,
    output      TEXT NOT NULL,
    last_used   REAL NOT NULL,
    PRIMARY KEY (namespace, stage_id, input_hash)
);
CREATE INDEX IF NOT EXISTS pure_cache_lru ON pure_cache(last_used);
CREATE INDEX IF NOT EXISTS pure_cache_stage ON pure_cache(stage_id);
"""


def cache_namespace(store_writes: bool, requester_uid: int | None) -> str:
    """Where a run's entries live: the writers' shared namespace, or the peer's own."""
    return WRITERS if store_writes else f"peer-{requester_uid}"


class PureCache:
    def __init__(self, conn: sqlite3.Connection, *, max_entries: int = 100_000) -> None:
        self.conn = conn
        self.max_entries = max_entries
        columns = {row[1] for row in conn.execute("PRAGMA table_info(pure_cache)")}
        if columns and "namespace" not in columns:
            # A cache from before namespaces, shared by every peer: it is only a cache, start afresh.
            with write_txn(conn) as c:
                c.execute("DROP TABLE pure_cache")
        conn.executescript(SCHEMA)

    def get(self, stage_id: str, input_hash: str, *, namespace: str) -> tuple[bool, Any]:
        key = (namespace, stage_id, input_hash)
        row = self.conn.execute(
            "SELECT output FROM pure_cache WHERE namespace = ? AND stage_id = ? AND input_hash = ?", key
        ).fetchone()
        if row is None:
            return False, None
        # Touch for LRU; a lost race here only affects eviction order.
        self.conn.execute(
            "UPDATE pure_cache SET last_used = ? WHERE namespace = ? AND stage_id = ? AND input_hash = ?",
            (time.time(), *key),
        )
        return True, json.loads(row[0])

    def put(self, stage_id: str, input_hash: str, output: Any, *, namespace: str) -> None:
        with write_txn(self.conn) as c:
            c.execute(
                "INSERT OR REPLACE INTO pure_cache (namespace, stage_id, input_hash, output, last_used)"
                " VALUES (?, ?, ?, ?, ?)",
                (namespace, stage_id, input_hash, json.dumps(output, ensure_ascii=False), time.time()),
            )
            (n,) = c.execute("SELECT count(*) FROM pure_cache").fetchone()
            if n > self.max_entries:
                c.execute(
                    "DELETE FROM pure_cache WHERE rowid IN "
                    "(SELECT rowid FROM pure_cache ORDER BY last_used LIMIT ?)",
                    (n - self.max_entries,),
                )

    def evict(self, stage_id: str | None = None) -> int:
        """Drop a stage's entries (every namespace), or everything."""
        with write_txn(self.conn) as c:
            if stage_id is None:
                cur = c.execute("DELETE FROM pure_cache")
            else:
                cur = c.execute("DELETE FROM pure_cache WHERE stage_id = ?", (stage_id,))
            return cur.rowcount

    def size(self) -> int:
        (n,) = self.conn.execute("SELECT count(*) FROM pure_cache").fetchone()
        return int(n)
