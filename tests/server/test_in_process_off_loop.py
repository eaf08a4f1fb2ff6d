"""A live daemon keeps answering while hostile in-process graphs run (security finding 4).

The issue's case: a 2 KB graph of 19 ``to_json`` steps held the daemon's
event loop for 29 s. Here such graphs (and large structured values through
pure stages, concurrently, and a backtracking regular expression) run while
another client polls ``/v1/health``; every answer must come quickly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.engine.test_off_loop import REDOS, rows
from tests.server.live import Live, start_live

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    daemon = start_live(tmp_path_factory.mktemp("off-loop"))
    try:
        daemon.health()  # its host checks (cached) done before the measuring starts
        yield daemon
    finally:
        daemon.stop()


def health_latency_while(live: Live, graph: dict[str, Any], value: Any, options: dict[str, Any]) -> tuple[float, Any]:
    """The slowest /v1/health answer while ``graph`` runs, and the run's last event."""
    latencies: list[float] = []
    done = threading.Event()

    def poll() -> None:
        client = live.client(timeout=120)
        while not done.is_set():
            started = time.monotonic()
            status, _ = client.request("GET", "/v1/health")
            latencies.append(time.monotonic() - started)
            assert status == 200
            time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        last = list(live.client(timeout=300).run(graph, value, options))[-1]
    finally:
        done.set()
        poller.join()
    assert latencies, "no health answer at all"
    return max(latencies), last


def g(root: dict[str, Any]) -> dict[str, Any]:
    return {"description": "hostile", "version": "1", "root": root}


def test_the_issues_to_json_graph_leaves_the_daemon_answering(live: Live) -> None:
    graph = g({"op": "Sequential", "stages": [{"op": "Stage", "id": "to_json"}] * 19})
    slowest, last = health_latency_while(live, graph, '"' * 1000, {"optimize": False})
    assert last["status"] == "failed" and last["error"]["code"] == "value_too_large", last["error"]
    assert slowest < 1.0, f"/v1/health took {slowest:.2f} s"


def test_large_values_through_a_concurrent_graph_leave_the_daemon_answering(live: Live) -> None:
    value = rows(60_000)
    graph = g({"op": "Sequential", "stages": [
        {"op": "Stage", "id": "identity"},
        {"op": "Parallel", "branches": {k: {"op": "Stage", "id": "list_dedup"} for k in "ab"}}]})
    slowest, last = health_latency_while(live, graph, value, {"optimize": False})
    assert last["status"] == "ok" and last["output"] == {"a": value, "b": value}, last.get("error")
    assert slowest < 2.5, f"/v1/health took {slowest:.2f} s"  # before: the whole run


def test_a_backtracking_pattern_stops_at_its_budget_and_the_daemon_answers(live: Live) -> None:
    graph = g({"op": "Fanout", "source": {"op": "Stage", "id": "identity"},
               "targets": [{"op": "Stage", "id": "regex_match"}] * 3})
    started = time.monotonic()
    slowest, last = health_latency_while(live, graph, REDOS, {"timeout_secs": 2})
    assert last["status"] == "failed" and last["error"]["code"] == "stage_timed_out", last["error"]
    assert time.monotonic() - started < 20
    assert slowest < 1.0, f"/v1/health took {slowest:.2f} s"
    live.serves_a_run()


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def test_one_text_returned_by_many_branches_is_refused_without_building_every_copy(live: Live) -> None:
    """300 branches returning their 1 MiB input make a record 300 MiB long that holds
    1 MiB: the daemon refuses it at its value cap without building the 300 MiB (it did,
    in one join, before: a 3 MB request could make it allocate gigabytes)."""
    before = peak_rss_mib(live.proc.pid)
    graph = g({"op": "Parallel", "branches": {f"b{i}": {"op": "Stage", "id": "identity"} for i in range(300)}})
    slowest, last = health_latency_while(live, graph, "x" * (1 << 20), {"optimize": False})
    assert last["status"] == "failed" and last["error"]["code"] == "value_too_large", last["error"]
    grew = peak_rss_mib(live.proc.pid) - before
    assert grew < 150, f"the daemon's peak RSS grew by {grew:.0f} MiB"
    live.serves_a_run()
