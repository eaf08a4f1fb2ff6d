"""The durable state file: SQLite in WAL mode at ``$NOETHER_HOME/noether.db``.

Several processes (the daemon, CLI invocations) may open it at once; WAL
plus a busy timeout gives readers that never block and serialised writers.
``synchronous=FULL`` makes an acknowledged commit survive a crash. The run
history alone is written ``durable=False`` (``synchronous=NORMAL``): its
commits are not flushed one by one (an fsync each cost more than a warm
stage run), so a power loss may drop the newest history rows; it never
corrupts the file, and a crash of the process alone loses nothing.

It holds every peer's kv values and traces: the file is created 0600 before
SQLite sees it (SQLite would make it 0644), so its ``-wal`` and ``-shm``
files, which SQLite creates with the database's own mode, are 0600 too.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from noether_nix.errors import NoetherError
from noether_nix.paths import (
    PRIVATE_FILE_MODE,
    ensure_home,
    noether_home,
    private_dir,
    private_file,
    tighten,
)

BUSY_TIMEOUT_MS = 10_000
# One connection is shared by the trio thread and the worker threads that
# build programs; SQLite refuses a BEGIN inside another thread's open
# transaction on it, so write transactions in this process take turns.
_WRITE_LOCK = threading.RLock()


class _Connection(sqlite3.Connection):
    def executescript(self, sql_script: str, /) -> sqlite3.Cursor:
        # executescript COMMITs any open transaction first: it must not end another thread's.
        with _WRITE_LOCK:
            return super().executescript(sql_script)


def connect(path: Path) -> sqlite3.Connection:
    try:
        if str(path) != ":memory:":  # an in-memory database has no file to keep private
            _private(path)
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False, factory=_Connection)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    except (sqlite3.Error, OSError) as e:
        raise NoetherError(
            "store_unavailable", f"cannot open the store database: {e}", path=str(path)
        ) from None
    return conn


def _private(path: Path) -> None:
    """The database and its side files 0600, in a private directory (the home is tightened to 0700)."""
    if path.parent.absolute() == noether_home().absolute():
        ensure_home()
    else:
        private_dir(path.parent, tighten_existing=False)
    private_file(path)
    for suffix in ("-wal", "-shm", "-journal"):  # left looser by an older version
        tighten(path.with_name(path.name + suffix), PRIVATE_FILE_MODE)


@contextmanager
def write_txn(conn: sqlite3.Connection, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
    """An IMMEDIATE transaction: take the write lock up front, roll back on error.
    ``durable=False``: committed without its own fsync (see the module doc)."""
    with _WRITE_LOCK:
        if not durable:
            conn.execute("PRAGMA synchronous=NORMAL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")
        finally:
            if not durable:
                conn.execute("PRAGMA synchronous=FULL")
