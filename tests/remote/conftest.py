"""A real REAPI cluster per test module: PostgreSQL, BuildGrid, two workers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.remote.cluster import BGD, BuildGrid, Postgres, Worker, pg_bin


@dataclass
class Cluster:
    root: Path
    pg: Postgres
    bg: BuildGrid
    workers: list[Worker] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.bg.url

    def add_worker(self, bot_id: str, *extra: str) -> Worker:
        return self.add_workers([(bot_id, *extra)])[0]

    def add_workers(self, specs: list[tuple[str, ...]]) -> list[Worker]:
        """Starts workers (bot id, then its flags) side by side and waits until each is ready:
        a worker takes seconds to start (its runtimes), so one after the other adds up."""
        started = [Worker(self.root / bot_id, self.url, bot_id, *extra) for bot_id, *extra in specs]
        for w in started:
            w.spawn()
            self.workers.append(w)  # stopped with the cluster, ready or not
        for w in started:
            w.wait_ready()
        return started

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        self.bg.stop()
        self.pg.stop()


def start_cluster(root: Path, workers: int = 2) -> Cluster:
    if not BGD.exists():
        pytest.fail(f"BuildGrid is not installed at {BGD}: run ./dev setup")
    if pg_bin("initdb") is None:
        pytest.fail("PostgreSQL is not installed: run ./dev setup")
    pg = Postgres()
    pg.start()
    cluster = Cluster(root, pg, BuildGrid(root / "bgd", pg.url))
    try:
        cluster.bg.migrate()
        cluster.bg.start()
        cluster.add_workers([(f"worker-{i + 1}",) for i in range(workers)])
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = start_cluster(tmp_path_factory.mktemp("reapi"))
    try:
        yield c
    finally:
        c.stop()
