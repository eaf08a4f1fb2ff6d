"""Stored runs and their traces, including failed and cancelled ones.

The history is bounded: a stored run (its trace and events) is capped at
``max_run_bytes`` — past it, stage entries and events are dropped from the
end and single oversized ones replaced, with a marker that says what went —
and finished runs are kept up to ``keep_runs`` runs and ``keep_bytes``
bytes, oldest dropped first, applied each time a run is stored. Traces and
events are stored zstd-compressed (rows written before are zlib-compressed
or plain JSON text, and read as such); the caps count the JSON, the
history's byte total the compressed rows.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import zlib
from typing import Any

import msgspec
import zstandard

from noether_nix.model.jcs import encoded_size, fits
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
# Covers the retention queries: they read no trace or events.
RETENTION_INDEX = "CREATE INDEX IF NOT EXISTS runs_retention ON runs(started_at, status, stored_bytes)"

_HEX = set("0123456789abcdef")
KEEP_RUNS = 10_000
KEEP_BYTES = 1 << 30
MAX_RUN_BYTES = 16 << 20


class RunStore:
    def __init__(self, conn: sqlite3.Connection, *, keep_runs: int = KEEP_RUNS, keep_bytes: int = KEEP_BYTES,
                 max_run_bytes: int = MAX_RUN_BYTES) -> None:
        self.conn = conn
        self.keep_runs = keep_runs
        self.keep_bytes = keep_bytes
        self.max_run_bytes = max_run_bytes
        conn.executescript(SCHEMA)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
        if "requester_uid" not in columns:  # databases from before runs had an owner
            with write_txn(conn) as c:
                c.execute("ALTER TABLE runs ADD COLUMN requester_uid INTEGER")
        if "stored_bytes" not in columns:  # databases from before the history was bounded
            with write_txn(conn) as c:
                c.execute("ALTER TABLE runs ADD COLUMN stored_bytes INTEGER NOT NULL DEFAULT 0")
                c.execute("UPDATE runs SET stored_bytes = coalesce(length(CAST(trace AS BLOB)), 0)"
                          " + coalesce(length(CAST(events AS BLOB)), 0)")
        conn.execute(RETENTION_INDEX)

    def start(self, run_id: str, composition_id: str, requester_uid: int | None = None) -> None:
        """``requester_uid``: the daemon peer who started it (None: an embedded run)."""
        with write_txn(self.conn, durable=False) as c:
            c.execute(
                "INSERT INTO runs (run_id, composition_id, status, started_at, owner_pid, requester_uid)"
                " VALUES (?, ?, 'running', ?, ?, ?)",
                (run_id, composition_id, time.time(), os.getpid(), requester_uid),
            )

    def finish(
        self, run_id: str, status: str, trace: dict[str, Any], events: list[Any], spent_cents: int
    ) -> None:
        trace_json, events_json = cap_stored_run(run_id, trace, events, self.max_run_bytes)
        trace_blob, events_blob = pack(trace_json), pack(events_json)
        with write_txn(self.conn, durable=False) as c:
            c.execute(
                "UPDATE runs SET status = ?, finished_at = ?, trace = ?, events = ?, spent_cents = ?,"
                " stored_bytes = ? WHERE run_id = ?",
                (status, time.time(), trace_blob, events_blob, spent_cents, len(trace_blob) + len(events_blob),
                 run_id),
            )
            self._retain(c)

    def _retain(self, c: sqlite3.Connection) -> int:
        """Drop the oldest finished runs past ``keep_runs`` or ``keep_bytes``; how many went."""
        n, total = c.execute("SELECT count(*), total(stored_bytes) FROM runs WHERE status != 'running'").fetchone()
        excess_runs, excess_bytes = n - self.keep_runs, int(total) - self.keep_bytes
        if excess_runs <= 0 and excess_bytes <= 0:
            return 0
        victims: list[tuple[str]] = []
        for run_id, size in c.execute(
                "SELECT run_id, stored_bytes FROM runs WHERE status != 'running' ORDER BY started_at"):
            if excess_runs <= 0 and excess_bytes <= 0:
                break
            victims.append((run_id,))
            excess_runs -= 1
            excess_bytes -= size
        c.executemany("DELETE FROM runs WHERE run_id = ?", victims)
        return len(victims)

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
            "trace": unpack(trace) if trace else None,
            "events": unpack(events) if events else [],
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

    def ids_with_prefix(self, prefix: str, *, visible_to: int | None = None,
                        limit: int = 10) -> tuple[list[str], list[str]]:
        """Run ids and composition ids (distinct) that start with ``prefix``, at most ``limit`` of each."""
        p = prefix.lower()
        if not p or not set(p) <= _HEX:
            return [], []
        mine, args = self._mine(visible_to)
        runs = [r[0] for r in self.conn.execute(
            f"SELECT run_id FROM runs WHERE run_id >= ? AND run_id < ?{mine} ORDER BY started_at DESC LIMIT ?",
            (p, p + "g", *args, limit))]
        comps = [r[0] for r in self.conn.execute(
            f"SELECT DISTINCT composition_id FROM runs WHERE composition_id >= ? AND composition_id < ?{mine}"
            " LIMIT ?", (p, p + "g", *args, limit))]
        return runs, comps

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


#: The first bytes of a zstd frame (RFC 8878); a zlib stream starts with 0x78.
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def pack(doc: bytes) -> bytes:
    """A stored trace or event list: its JSON, zstd-compressed at level 1. On run documents
    (JSON, repetitive) it is both faster and smaller than zlib's fastest level (a 0.89 MB
    output of 100,000 texts: 31 kB in 1.8 ms against zlib level 1's 227 kB in 4.4 ms)."""
    return zstandard.compress(doc, 1)


def unpack(stored: str | bytes) -> Any:
    """A stored trace or event list back as JSON builtins: zstd-compressed, or from
    before, zlib-compressed or plain text."""
    if isinstance(stored, bytes):
        if stored.startswith(_ZSTD_MAGIC):
            return json.loads(zstandard.decompress(stored))
        return json.loads(zlib.decompress(stored))
    return json.loads(stored)


# Room kept for the markers that say what a capped run lost.
_MARKER_ROOM = 1024
# Fields that identify a stage entry or an event; kept when the rest of it is too large to store.
_IDENTITY = ("event", "run_id", "node_path", "stage_id", "name", "status", "attempt", "step_index", "code")


def cap_stored_run(run_id: str, trace: dict[str, Any], events: list[Any], cap: int) -> tuple[bytes, bytes]:
    """The trace and events as stored: as they are when they fit in ``cap`` bytes,
    else cut to fit, with ``trace["stored"]`` and a warning event saying what was dropped.

    The run's output (the one field that holds an arbitrary value) is measured
    with an early stop before anything is encoded, so an output that would
    encode to gigabytes is never serialised to find out; or it comes encoded
    already (``msgspec.Raw``: the caller bounded it, a checked run output).
    """
    item_cap = max(cap // 4, 1)
    replaced = 0
    last = events[-1] if events and isinstance(events[-1], dict) and "output" in events[-1] else None
    if last is not None:
        output = last["output"]
        if isinstance(output, msgspec.Raw):
            size = len(output)
        elif fits(output, item_cap):
            size = 0
        else:
            size = encoded_size(output, item_cap)
        if size > item_cap:
            events = [*events[:-1], {**last, "output": _too_large(size, exact=isinstance(output, msgspec.Raw))}]
            replaced += 1
    trace_json, events_json = msgspec.json.encode(trace), msgspec.json.encode(events)
    if len(trace_json) + len(events_json) <= cap and not replaced:
        return trace_json, events_json

    # The trace: its small fields as they are, its stage entries from the first while they fit in half.
    rest = {k: v for k, v in trace.items() if k != "stages"}
    for k, v in rest.items():
        size = len(msgspec.json.encode(v))
        if size > cap // 16:
            rest[k] = _too_large(size)
            replaced += 1
    stages = trace.get("stages")
    stages = stages if isinstance(stages, list) else []
    rest_size = len(msgspec.json.encode(rest))
    kept_stages, shrunk = _fit(stages, cap // 2 - rest_size - _MARKER_ROOM, cap // 16)
    replaced += shrunk
    # The events: the last one (the run's end) always, the others from the first while they fit.
    final = [events[-1]] if events and isinstance(events[-1], dict) and events[-1].get("event") == "run_finished" \
        else []
    body = events[: len(events) - len(final)]
    final_pieces, shrunk = _fit(final, item_cap, item_cap)
    replaced += shrunk
    kept_stages_json = _join(kept_stages)
    used = len(kept_stages_json) + rest_size + sum(map(len, final_pieces))
    kept_events, shrunk = _fit(body, cap - used - 2 * _MARKER_ROOM, item_cap)
    replaced += shrunk
    dropped = {"stages_dropped": len(stages) - len(kept_stages), "events_dropped": len(body) - len(kept_events),
               "values_replaced": replaced}
    marker = {"cap_bytes": cap, **dropped}
    stored_trace: dict[str, Any] = {**rest, "stored": {"truncated": marker}}
    if "stages" in trace:
        stored_trace["stages"] = msgspec.Raw(kept_stages_json)
    what = ", ".join(f"{n} {says}" for n, says in ((dropped["stages_dropped"], "trace entries dropped"),
                                                   (dropped["events_dropped"], "events dropped"),
                                                   (replaced, "oversized values replaced")) if n)
    warning = {"event": "warning", "run_id": run_id, "code": "stored_run_truncated",
               "message": f"this stored copy of the run was cut to its {cap} byte limit "
                          f"({what}); the run itself was not affected"}
    return (msgspec.json.encode(stored_trace),
            _join([*kept_events, msgspec.json.encode(warning), *final_pieces]))


def _fit(items: list[Any], budget: int, item_cap: int) -> tuple[list[bytes], int]:
    """The encodings of ``items`` from the first while they fit in ``budget`` bytes, an item over
    ``item_cap`` replaced by its identity and a marker; and how many were replaced."""
    out: list[bytes] = []
    used = replaced = 0
    for item in items:
        piece = msgspec.json.encode(item)
        if len(piece) > item_cap:
            piece = msgspec.json.encode(_shrunk(item, len(piece)))
            replaced += 1
        if used + len(piece) + 1 > budget:
            break
        out.append(piece)
        used += len(piece) + 1
    return out, replaced


def _shrunk(item: Any, size: int) -> Any:
    """An oversized stage entry or event: what identifies it, and a marker for the rest."""
    if not isinstance(item, dict):
        return _too_large(size)
    kept = {k: item[k] for k in _IDENTITY if k in item and len(msgspec.json.encode(item[k])) <= 256}
    return {**kept, **_too_large(size)}


def _too_large(size: int, *, exact: bool = True) -> dict[str, Any]:
    """What stands in for a value too large to store."""
    return {"truncated": f"{'' if exact else 'more than '}{size} bytes, over the stored-run limit"}


def _join(pieces: list[bytes]) -> bytes:
    return b"[" + b",".join(pieces) + b"]"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
