"""Security finding 4, storage: one small request must not store 250 MB, and
the run history must not grow without bound."""

from __future__ import annotations

import sqlite3
import tracemalloc
import zlib
from typing import Any

import msgspec
import pytest

from noether_nix.engine.engine import Engine, RunOptions
from noether_nix.errors import NoetherError
from noether_nix.paths import db_path
from noether_nix.settings import EngineSettings
from noether_nix.store.db import connect
from noether_nix.store.runs import RunStore


def stored_size(runs: RunStore, run_id: str) -> int:
    row = runs.conn.execute("SELECT length(CAST(trace AS BLOB)) + length(CAST(events AS BLOB)), stored_bytes"
                            " FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    assert row[0] == row[1]  # what retention counts is what is stored
    return int(row[0])


def store_run(runs: RunStore, run_id: str, *, stages: int = 1, output: Any = "ok", texts: list[str] | None = None,
              status: str = "ok") -> None:
    runs.start(run_id, "comp")
    entries = [{"stage_id": "s" * 64, "node_path": f"root.stages[{i}]", "name": "step", "status": "Ok",
                "attempt": 1, "duration_ms": 1, "input_hash": "h" * 64, "output_hash": "h" * 64,
                "step_index": i} for i in range(stages)]
    trace = {"composition_id": "comp", "run_id": run_id, "status": "Ok", "stages": entries, "warnings": []}
    events: list[Any] = [{"event": "run_accepted", "run_id": run_id, "composition_id": "comp", "started_at": "t"}]
    events += [{"event": "stage_output", "run_id": run_id, "node_path": "root", "text": t} for t in texts or []]
    events.append({"event": "run_finished", "run_id": run_id, "status": status, "duration_ms": 5, "output": output})
    runs.finish(run_id, status, trace, events, 0)


def test_a_run_that_fits_is_stored_untouched() -> None:
    runs = RunStore(connect(db_path()), max_run_bytes=64 << 10)
    store_run(runs, "r", stages=3, output={"answer": [1, 2, 3]}, texts=["hello"])
    got = runs.get("r")
    assert got is not None
    assert "stored" not in got["trace"] and len(got["trace"]["stages"]) == 3
    assert [e["event"] for e in got["events"]] == ["run_accepted", "stage_output", "run_finished"]
    assert got["events"][-1]["output"] == {"answer": [1, 2, 3]}


def test_an_oversized_run_is_cut_to_its_cap_with_a_marker() -> None:
    cap = 64 << 10
    runs = RunStore(connect(db_path()), max_run_bytes=cap)
    texts = [f"line {i} " + "x" * 100 for i in range(2000)] + ["y" * 200_000, "last words"]
    store_run(runs, "big", stages=5000, output={"rows": ["z" * 50] * 10_000}, texts=texts)
    assert stored_size(runs, "big") <= cap + 2048
    got = runs.get("big")
    assert got is not None
    trace, events = got["trace"], got["events"]
    marker = trace["stored"]["truncated"]
    assert marker["cap_bytes"] == cap
    assert 0 < len(trace["stages"]) < 5000 and marker["stages_dropped"] == 5000 - len(trace["stages"])
    assert trace["stages"][0]["node_path"] == "root.stages[0]"  # the first entries are the ones kept
    assert marker["events_dropped"] > 0 and marker["values_replaced"] >= 1
    # The start, the end and a warning that says what went are always there.
    assert events[0]["event"] == "run_accepted"
    assert events[-2]["event"] == "warning" and events[-2]["code"] == "stored_run_truncated"
    assert "events dropped" in events[-2]["message"] and "the run itself was not affected" in events[-2]["message"]
    final = events[-1]
    assert final["event"] == "run_finished" and final["status"] == "ok"
    assert "bytes, over the stored-run limit" in final["output"]["truncated"]


def test_an_output_that_would_encode_to_gigabytes_is_never_serialised() -> None:
    runs = RunStore(connect(db_path()), max_run_bytes=1 << 20)
    huge = [{"text": "x" * 1000}] * 1_000_000  # ~1 GB of JSON, a few MB of memory
    tracemalloc.start()
    try:
        store_run(runs, "doubling", output=huge)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"storing the run took {peak} bytes"
    got = runs.get("doubling")
    assert got is not None and got["events"][-1]["output"]["truncated"].startswith("more than ")
    assert stored_size(runs, "doubling") < 1 << 20


def test_one_oversized_event_is_replaced_and_the_rest_kept() -> None:
    runs = RunStore(connect(db_path()), max_run_bytes=128 << 10)
    store_run(runs, "mid", texts=["before", "q" * 200_000, "after"])
    got = runs.get("mid")
    assert got is not None
    kinds = [(e["event"], e.get("text")) for e in got["events"]]
    assert ("stage_output", "before") in kinds and ("stage_output", "after") in kinds
    replaced = [e for e in got["events"] if "truncated" in e]
    assert len(replaced) == 1 and replaced[0]["event"] == "stage_output" and replaced[0]["node_path"] == "root"
    assert got["trace"]["stored"]["truncated"]["values_replaced"] == 1


def test_the_oldest_finished_runs_go_first_past_the_count() -> None:
    runs = RunStore(connect(db_path()), keep_runs=3)
    runs.start("in-flight", "comp")  # a running run is never dropped
    for i in range(6):
        store_run(runs, f"r{i}")
    kept = {r["run_id"] for r in runs.recent(100)}
    assert kept == {"in-flight", "r3", "r4", "r5"}


def test_the_oldest_finished_runs_go_first_past_the_bytes() -> None:
    conn = connect(db_path())
    probe = RunStore(conn)
    store_run(probe, "probe", texts=["p" * 10_000])
    one = stored_size(probe, "probe")
    runs = RunStore(conn, keep_bytes=3 * one + one // 2)
    for i in range(5):
        store_run(runs, f"r{i}", texts=["p" * 10_000])
    kept = {r["run_id"] for r in runs.recent(100)}
    assert kept == {"r2", "r3", "r4"}
    (total,) = conn.execute("SELECT sum(stored_bytes) FROM runs").fetchone()
    assert total <= runs.keep_bytes


def test_a_history_from_before_the_limits_is_measured_on_open() -> None:
    path = db_path()
    old = sqlite3.connect(path, isolation_level=None)
    old.executescript(
        "CREATE TABLE runs (run_id TEXT PRIMARY KEY, composition_id TEXT NOT NULL, status TEXT NOT NULL,"
        " started_at REAL NOT NULL, finished_at REAL, spent_cents INTEGER NOT NULL DEFAULT 0, trace TEXT,"
        " events TEXT, owner_pid INTEGER, requester_uid INTEGER);")
    for i in range(4):
        old.execute("INSERT INTO runs (run_id, composition_id, status, started_at, trace, events)"
                    " VALUES (?, 'c', 'ok', ?, ?, '[]')", (f"old{i}", i, '{"x": "' + "é" * 100 + '"}'))
    old.close()
    runs = RunStore(connect(path), keep_runs=2)
    assert stored_size(runs, "old0") == len(('{"x": "' + "é" * 100 + '"}').encode()) + 2
    store_run(runs, "new")
    assert {r["run_id"] for r in runs.recent(10)} == {"old3", "new"}


# ---------------------------------------------------------------- through the engine


@pytest.fixture
def small_history_engine() -> Engine:
    return Engine(EngineSettings(max_stored_runs=2, max_stored_run_bytes=32 << 10, max_value_bytes=256 << 10))


HELLO = {"description": "d", "version": "1", "root": {"op": "Stage", "id": "text_upper"}}


async def test_the_engine_keeps_the_configured_history(small_history_engine: Engine) -> None:
    ids = [(await small_history_engine.run(HELLO, f"run {i}", RunOptions())).run_id for i in range(4)]
    assert {r["run_id"] for r in small_history_engine.runs.recent(10)} == set(ids[2:])


async def test_a_large_output_is_returned_whole_and_stored_cut(small_history_engine: Engine) -> None:
    text = "a" * 100_000
    res = await small_history_engine.run(HELLO, text, RunOptions())
    assert res.status == "ok" and res.output == text.upper()  # the caller gets all of it
    stored = small_history_engine.runs.get(res.run_id)
    assert stored is not None and stored["trace"]["stored"]["truncated"]["values_replaced"] >= 1
    assert len(msgspec.json.encode(stored)) < 40 << 10
    # A checked output comes to the store encoded: measured exactly, not with an early stop.
    assert stored["events"][-1]["output"] == {"truncated": "100002 bytes, over the stored-run limit"}
    identity = {**HELLO, "root": {"op": "Stage", "id": "identity"}}
    small = await small_history_engine.run(identity, {"k": ["é", 1.5, True, None]}, RunOptions())
    stored = small_history_engine.runs.get(small.run_id)
    assert stored is not None and stored["events"][-1]["output"] == small.output == {"k": ["é", 1.5, True, None]}


async def test_a_value_over_the_cap_fails_the_stage_with_value_too_large(small_history_engine: Engine) -> None:
    # to_json doubles its input: the second step's output is over the 256 KiB cap.
    g = {"description": "d", "version": "1", "root": {"op": "Sequential", "stages": [
        {"op": "Stage", "id": "to_json"}, {"op": "Stage", "id": "to_json"}, {"op": "Stage", "id": "to_json"}]}}
    res = await small_history_engine.run(g, "\"" * 50_000, RunOptions(optimize=False))
    assert res.status == "failed" and res.error is not None
    assert res.error["code"] == "value_too_large"
    assert "the output of stage" in res.error["message"] and "256 KiB" in res.error["message"]
    # Three outputs under the cap, put together by Parallel: the next stage's input is over it.
    three = {"op": "Parallel", "branches": {k: {"op": "Stage", "id": "to_json"} for k in "abc"}}
    g = {"description": "d", "version": "1", "root": {"op": "Sequential", "stages": [
        three, {"op": "Stage", "id": "identity"}]}}
    too_big = await small_history_engine.run(g, "\"" * 50_000, RunOptions(optimize=False))
    assert too_big.error is not None and too_big.error["code"] == "value_too_large"
    assert "the input of stage identity" in too_big.error["message"], too_big.error
    # At the root, the run's own output.
    g = {"description": "d", "version": "1", "root": three}
    too_big = await small_history_engine.run(g, "\"" * 50_000, RunOptions(optimize=False))
    assert too_big.error is not None and too_big.error["code"] == "value_too_large"
    assert "the run's output" in too_big.error["message"], too_big.error
    # The run's input, refused before the run starts.
    with pytest.raises(NoetherError) as refused:
        await small_history_engine.run(HELLO, "b" * 300_000, RunOptions())
    assert refused.value.code == "value_too_large" and refused.value.path == "input"


def test_stored_traces_are_compressed_and_old_plain_rows_still_read() -> None:
    conn = connect(db_path())
    runs = RunStore(conn)
    store_run(runs, "big", stages=2000)
    row = conn.execute("SELECT trace, stored_bytes FROM runs WHERE run_id = 'big'").fetchone()
    plain = len(msgspec.json.encode(runs.get("big")["trace"]))  # type: ignore[index]
    assert isinstance(row[0], bytes) and row[1] < plain // 5, (row[1], plain)  # 2,000 alike entries squeeze well
    assert len(runs.get("big")["trace"]["stages"]) == 2000  # type: ignore[index]
    conn.execute("INSERT INTO runs (run_id, composition_id, status, started_at, trace, events, stored_bytes)"
                 " VALUES ('before', 'c', 'ok', 1, '{\"stages\": []}', '[]', 17)")
    before = runs.get("before")
    assert before is not None and before["trace"] == {"stages": []} and before["events"] == []
    # Rows stored zlib-compressed (before zstd) read as they were.
    conn.execute("INSERT INTO runs (run_id, composition_id, status, started_at, trace, events, stored_bytes)"
                 " VALUES ('zlib', 'c', 'ok', 1, ?, ?, 17)",
                 (zlib.compress(b'{"stages": [{"n": 1}]}', 1), zlib.compress(b'[{"event": "x"}]', 1)))
    old = runs.get("zlib")
    assert old is not None and old["trace"] == {"stages": [{"n": 1}]} and old["events"] == [{"event": "x"}]


async def test_the_stored_output_is_what_its_hash_was_taken_of(small_history_engine: Engine) -> None:
    """The last stage's plain output is stored as the bytes its output hash covers (one
    encoding, object keys sorted), so the stored copy can be checked against the trace."""
    from noether_nix.model.jcs import value_hash

    identity = {**HELLO, "root": {"op": "Stage", "id": "identity"}}
    value = {"b": ["x", 1, None], "a": {"d": True, "c": "é"}}
    res = await small_history_engine.run(identity, value, RunOptions())
    stored = small_history_engine.runs.get(res.run_id)
    assert stored is not None
    out = stored["events"][-1]["output"]
    assert out == value and list(out) == ["a", "b"] and list(out["a"]) == ["c", "d"]
    (entry,) = stored["trace"]["stages"]
    assert entry["output_hash"] == value_hash(out) == value_hash(value)
    # A value with floats is not the C encoder's: stored as msgspec writes it, keys as they came.
    res = await small_history_engine.run(identity, {"b": 0.5, "a": 1}, RunOptions())
    stored = small_history_engine.runs.get(res.run_id)
    assert stored is not None and list(stored["events"][-1]["output"]) == ["b", "a"]
