from __future__ import annotations

import os
import subprocess

from noether_nix.paths import db_path
from noether_nix.store.cache import WRITERS, PureCache, cache_namespace
from noether_nix.store.db import connect
from noether_nix.store.runs import RunStore


def test_pure_cache_round_trip_and_lru_eviction() -> None:
    cache = PureCache(connect(db_path()), max_entries=3)
    for i in range(3):
        cache.put("s", f"h{i}", {"i": i}, namespace=WRITERS)
    assert cache.get("s", "h0", namespace=WRITERS) == (True, {"i": 0})  # h0 is now the most recently used
    cache.put("s", "h3", {"i": 3}, namespace=WRITERS)
    assert cache.size() == 3
    assert cache.get("s", "h1", namespace=WRITERS) == (False, None)  # least recently used went first
    assert cache.get("s", "h0", namespace=WRITERS)[0] and cache.get("s", "h3", namespace=WRITERS)[0]


def test_cache_survives_reopening() -> None:
    PureCache(connect(db_path())).put("s", "h", [1, 2.5, "x"], namespace=WRITERS)
    assert PureCache(connect(db_path())).get("s", "h", namespace=WRITERS) == (True, [1, 2.5, "x"])


def test_cache_namespaces_keep_peers_apart() -> None:
    cache = PureCache(connect(db_path()))
    alice, bob = cache_namespace(False, 1001), cache_namespace(False, 1002)
    cache.put("s", "h", "alice's output", namespace=alice)
    assert cache.get("s", "h", namespace=bob) == (False, None)
    assert cache.get("s", "h", namespace=WRITERS) == (False, None)  # nor can a peer plant one for writers
    cache.put("s", "h", "writers' output", namespace=cache_namespace(True, 0))
    assert cache.get("s", "h", namespace=cache_namespace(True, 1000)) == (True, "writers' output")
    assert cache.get("s", "h", namespace=alice) == (True, "alice's output")
    assert cache.evict("s") == 2


def test_a_cache_from_before_namespaces_is_started_afresh() -> None:
    conn = connect(db_path())
    conn.executescript("CREATE TABLE pure_cache (stage_id TEXT NOT NULL, input_hash TEXT NOT NULL, output TEXT NOT NULL,"
                       " last_used REAL NOT NULL, PRIMARY KEY (stage_id, input_hash));"
                       "INSERT INTO pure_cache VALUES ('s', 'h', '\"someone else''s\"', 0);")
    cache = PureCache(conn)
    assert cache.size() == 0 and cache.get("s", "h", namespace=WRITERS) == (False, None)


def test_runs_of_dead_processes_are_marked_interrupted() -> None:
    runs = RunStore(connect(db_path()))
    runs.start("live", "c1")
    child = subprocess.Popen(["true"])
    child.wait()
    runs.start("dead", "c1")
    runs.conn.execute("UPDATE runs SET owner_pid = ? WHERE run_id = 'dead'", (child.pid,))
    assert runs.mark_interrupted() == 1
    dead, live = runs.get("dead"), runs.get("live")
    assert dead is not None and dead["status"] == "interrupted"
    assert live is not None and live["status"] == "running"
    assert os.getpid() > 0
    runs.finish("live", "ok", {"status": "Ok"}, [{"event": "run_finished"}], 3)
    latest = runs.latest("c1")
    assert latest is not None and latest["run_id"] in ("live", "dead")
    got = runs.get("live")
    assert got is not None and got["trace"] == {"status": "Ok"} and got["spent_cents"] == 3
