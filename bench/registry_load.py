"""Registry throughput and latency on 127.0.0.1, SQLite and PostgreSQL (bounded).

Usage: .venv/bin/python bench/registry_load.py [STAGES] [READS]   (default 1000 stages, 400 reads a kind)

For each backend: starts `noether registry serve` (PostgreSQL: a private
cluster on a Unix socket in a temp dir), publishes STAGES signed stages one
after another over one keep-alive connection, then 4 client threads make
READS requests of each kind (get by id, a 200-stage page, a word search, a
type-signature search). Prints publishes/s and per-kind p50 / p95 latency.
Checks every answer; exits non-zero on a wrong one.
"""

from __future__ import annotations

import concurrent.futures as cf
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tests.registry.conftest import API_KEY, PgCluster, Registry, signed_stage_json


def request(conn: http.client.HTTPConnection, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    headers = {"x-api-key": API_KEY, "content-type": "application/json"}
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


def stages(n: int, home: Path) -> list[dict[str, Any]]:
    words = ["parse", "render", "count", "merge", "split", "score", "rank", "clean", "index", "route"]
    out = []
    for i in range(n):
        verb, noun = words[i % 10], words[(i // 10) % 10]
        out.append(signed_stage_json({
            "name": f"bench_{i}", "description": f"Bench stage {i}: {verb} the {noun}s of a record",
            "input": {"Record": [[f"f{i % 7}", "Number"]]}, "output": "Number",
            "implementation": f"def execute(x):\n    return x['f{i % 7}'] + {i}\n",
            "examples": [{"input": {f"f{i % 7}": 1}, "output": 1 + i}]}, home))
    return out


def pct(xs: list[float], p: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(len(xs) * p))] * 1000


def measure(reg: Registry, docs: list[dict[str, Any]], reads: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=60)
    started = time.monotonic()
    for doc in docs:
        status, body = request(conn, "POST", "/stages", doc)
        assert status == 201, body
    publish_s = time.monotonic() - started
    conn.close()
    kinds = {
        "get": lambda i: f"/stages/{docs[i % len(docs)]['id']}",
        "page of 200": lambda i: f"/stages?limit=200&offset={(i * 200) % len(docs)}",
        "search words": lambda i: "/stages/search?q=" + quote(["merge records", "count", "parse the indexs"][i % 3]),
        "search signature": lambda i: "/stages/search?q=" + quote(f"Record{{f{i % 7}: Number}} -> Number"),
    }
    out: dict[str, Any] = {"publish_per_s": len(docs) / publish_s}
    for kind, path_of in kinds.items():
        def worker(start: int, path_of: Any = path_of) -> list[float]:
            c = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=60)
            times = []
            for i in range(start, reads, 4):
                t = time.monotonic()
                status, body = request(c, "GET", path_of(i))
                times.append(time.monotonic() - t)
                assert status == 200 and body["ok"], body
            c.close()
            return times

        with cf.ThreadPoolExecutor(4) as pool:
            times = [t for part in pool.map(worker, range(4)) for t in part]
        out[kind] = (pct(times, 0.5), pct(times, 0.95), statistics.mean(times) * 1000)
    return out


def main(argv: list[str]) -> int:
    n = int(argv[1]) if len(argv) > 1 else 1000
    reads = int(argv[2]) if len(argv) > 2 else 400
    home = Path(tempfile.mkdtemp(prefix="registry-bench-"))
    docs = stages(n, home)
    cluster = PgCluster()
    try:
        for backend, env in (("sqlite", {}), ("postgresql", {"DATABASE_URL": cluster.new_database()})):
            reg = Registry(Path(tempfile.mkdtemp(prefix=f"registry-{backend}-")),
                           {"NOETHER_API_KEY": API_KEY, **env})
            try:
                r = measure(reg, docs, reads)
            finally:
                reg.stop()
            print(f"{backend}: {n} publishes at {r['publish_per_s']:.0f}/s")
            for kind in ("get", "page of 200", "search words", "search signature"):
                p50, p95, mean = r[kind]
                print(f"  {kind:17s} p50 {p50:6.1f} ms  p95 {p95:6.1f} ms  mean {mean:6.1f} ms  ({reads} requests, 4 clients)")
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
