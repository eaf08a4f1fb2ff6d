"""PostgreSQL under the stage store's own code.

``PgConnection`` is the slice of ``sqlite3.Connection`` that
``store.stages.StageStore`` and ``store.db.write_txn`` use, on psycopg 3, so
the registry's writes go through the very lifecycle code a local ``stage
add`` does (content addressing, Draft→Active, auto-deprecation) instead of
a second copy of it. Two translations make that work:

- ``?`` placeholders become ``%s`` (the store's SQL has no literal ``%``/``?``);
- ``BEGIN IMMEDIATE`` (SQLite: take the write lock now) becomes ``BEGIN``
  plus a transaction-scoped advisory lock, so writers in every replica
  sharing the database take turns exactly as SQLite's writers do.

The connection runs in autocommit mode outside those transactions. A
connection the server lost is reopened on the next statement outside a
transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from noether_nix.errors import NoetherError

#: The advisory lock every registry writer takes (an arbitrary constant: "noether").
WRITE_LOCK_KEY = 0x6E6F6574686572


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable DATABASE_URL>"
    parts = [f"{k}={v}" for k, v in sorted(info.items()) if k != "password" and v is not None]
    return " ".join(parts)


class PgConnection:
    def __init__(self, url: str) -> None:
        self.url = url
        self._conn = self._connect()
        self._in_txn = False

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.Error as e:
            raise NoetherError("store_unavailable", f"cannot connect to PostgreSQL: {e}".strip(),
                               path=redact(self.url)) from None

    def _live(self) -> psycopg.Connection[Any]:
        if (self._conn.closed or self._conn.broken) and not self._in_txn:
            self._conn = self._connect()
        return self._conn

    def execute(self, sql: str, args: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        conn = self._live()
        stmt = sql.strip().upper()
        try:
            if stmt == "BEGIN IMMEDIATE":
                cur = conn.execute("BEGIN")
                self._in_txn = True
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
                return cur
            if stmt in ("COMMIT", "ROLLBACK"):
                self._in_txn = False
                return conn.execute(stmt)
            return conn.execute(sql.replace("?", "%s"), tuple(args))
        except psycopg.OperationalError as e:
            self._in_txn = False
            raise NoetherError("store_unavailable", f"PostgreSQL: {e}".strip(), path=redact(self.url)) from None

    def executescript(self, script: str) -> None:
        """Run DDL statements in one transaction, serialised with every other writer
        (replicas starting together would otherwise race on CREATE … IF NOT EXISTS)."""
        self.execute("BEGIN IMMEDIATE")
        try:
            for stmt in script.split(";"):
                if stmt.strip():
                    self.execute(stmt)
        except BaseException:
            self.execute("ROLLBACK")
            raise
        self.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()
