"""The engine's key-value table behind the stdlib ``kv_*`` stages.

Values are JSON; keys live in namespaces (``null`` is the default
namespace). It is a table of the store database, so it is durable and shared
by the daemon and embedded runs; stages never touch it directly — the
engine answers kv stages itself.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from noether_nix.store.db import write_txn

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    namespace  TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    PRIMARY KEY (namespace, key)
);
"""


class KvStore:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        conn.executescript(SCHEMA)

    @staticmethod
    def _ns(namespace: str | None) -> str:
        return namespace or ""

    def set(self, namespace: str | None, key: str, value: Any) -> None:
        with write_txn(self.conn) as c:
            c.execute(
                "INSERT OR REPLACE INTO kv (namespace, key, value) VALUES (?, ?, ?)",
                (self._ns(namespace), key, json.dumps(value, ensure_ascii=False)),
            )

    def get(self, namespace: str | None, key: str) -> Any:
        row = self.conn.execute(
            "SELECT value FROM kv WHERE namespace = ? AND key = ?", (self._ns(namespace), key)
        ).fetchone()
        return json.loads(row[0]) if row else None

    def exists(self, namespace: str | None, key: str) -> bool:
        return (
            self.conn.execute(
                "SELECT 1 FROM kv WHERE namespace = ? AND key = ?", (self._ns(namespace), key)
            ).fetchone()
            is not None
        )

    def delete(self, namespace: str | None, key: str) -> bool:
        with write_txn(self.conn) as c:
            return c.execute(
                "DELETE FROM kv WHERE namespace = ? AND key = ?", (self._ns(namespace), key)
            ).rowcount > 0

    def list(self, namespace: str | None, prefix: str) -> list[str]:
        rows = self.conn.execute(
            "SELECT key FROM kv WHERE namespace = ? AND substr(key, 1, ?) = ? ORDER BY key",
            (self._ns(namespace), len(prefix), prefix),
        ).fetchall()
        return [r[0] for r in rows]
