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
        w = Worker(self.root / bot_id, self.url, bot_id, *extra)
        w.start()
        self.workers.append(w)
        return w

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
        for i in range(workers):
            cluster.add_worker(f"worker-{i + 1}")
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
