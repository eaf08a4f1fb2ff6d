"""Two registry processes on one PostgreSQL database see each other's writes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.registry.conftest import API_KEY, curl, signed_stage_json, spec

KEY = ["-H", f"X-API-Key: {API_KEY}"]


def test_two_replicas_share_one_database(start_registry: Any, pg_url: str, tmp_path: Path) -> None:
    # Started together on an empty database: both create and migrate the schema at once.
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _: start_registry({"DATABASE_URL": pg_url}), range(2))
    assert a.port != b.port
    # Both seeded the stdlib at start: content addressing made the second a no-op.
    ta = curl(f"{a.url}/health")[1]["result"]["store"]["total_stages"]
    assert curl(f"{b.url}/health")[1]["result"]["store"]["total_stages"] == ta

    v1 = signed_stage_json(spec("replicated", "Written through replica A", "def execute(x):\n    return x\n"), tmp_path)
    assert curl("-X", "POST", f"{a.url}/stages", *KEY, data=v1)[0] == 201
    assert curl(f"{b.url}/stages/{v1['id']}")[1]["result"]["lifecycle"] == "Active"
    assert curl(f"{b.url}/stages/search?q=replica")[1]["result"]["results"][0]["id"] == v1["id"]
    assert curl(f"{b.url}/health")[1]["result"]["store"]["total_stages"] == ta + 1

    # A newer version through B deprecates A's, and A sees it.
    v2 = signed_stage_json(spec("replicated", "Written through replica B", "def execute(x):\n    return 1 * x\n"),
                           tmp_path)
    res = curl("-X", "POST", f"{b.url}/stages", *KEY, data=v2)[1]["result"]
    assert res["supersedes"] == [v1["id"]]
    assert curl(f"{a.url}/stages/{v1['id']}")[1]["result"]["lifecycle"] == {"Deprecated": {"successor_id": v2["id"]}}
    assert curl(f"{a.url}/stages/replicated")[1]["result"]["id"] == v2["id"]
    # The same stage through both: one row, the second answer says so.
    assert curl("-X", "POST", f"{a.url}/stages", *KEY, data=v2)[1]["result"]["is_new"] is False
    listed = curl(f"{a.url}/stages?lifecycle=all&limit=200")[1]["result"]
    assert sum(1 for s in listed["stages"] if s["name"] == "replicated") == 2
