"""The CLI against a real registry: publish, list merge and shadowing, sync, search,
lifecycle commands, the --registry flag, and errors that name the registry."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.registry.conftest import API_KEY, Registry, curl, noether, spec


def write(path: Path, doc: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def homes(tmp_path: Path) -> tuple[Path, Path]:
    """Two users: a publisher and a reader, each with a store and an author key of their own."""
    return tmp_path / "publisher", tmp_path / "reader"


def test_publish_list_merge_and_shadowing(registry: Registry, homes: tuple[Path, Path], tmp_path: Path) -> None:
    publisher, reader = homes
    f = write(tmp_path / "celsius.json", spec("celsius_to_kelvin", "Convert celsius to kelvin",
                                              "def execute(x):\n    return x + 273.15\n",
                                              examples=[{"input": 0, "output": 273.15}]))
    _, out, _ = noether("--registry", registry.url, "stage", "add", str(f), home=publisher,
                        env={"NOETHER_API_KEY": API_KEY})
    sid = out["data"]["id"]
    assert out["data"] == {"id": sid, "lifecycle": "active", "is_new": True, "registry": registry.url}
    # Published, not added locally.
    assert noether("stage", "get", sid, home=publisher, check_rc=1)[2]["error"]["code"] == "stage_not_found"

    env = {"NOETHER_REGISTRY": registry.url}
    _, listed, _ = noether("stage", "list", "--full-ids", home=reader, env=env)
    rows = {r["id"]: r for r in listed["data"]["stages"]}
    assert rows[sid]["origin"] == registry.url and rows[sid]["name"] == "celsius_to_kelvin"
    # The stdlib is in both: the local copies shadow the registry's.
    stdlib = [r for r in rows.values() if r["name"] == "text_upper"]
    assert len(stdlib) == 1 and stdlib[0]["origin"] == "local"
    assert listed["data"]["registry"]["shadowed"] >= 80
    assert len(rows) == listed["data"]["count"]

    # Get: local first, then the registry (by prefix too), marked with its origin.
    _, got, _ = noether("stage", "get", sid[:10], home=reader, env=env)
    assert got["data"]["id"] == sid and got["data"]["origin"] == registry.url

    # The same stage added locally now shadows the remote copy.
    noether("stage", "add", "--no-build", str(f), home=reader)
    _, listed, _ = noether("stage", "list", "--full-ids", home=reader, env=env)
    mine = [r for r in listed["data"]["stages"] if r["id"] == sid]
    assert len(mine) == 1 and mine[0]["origin"] == "local"


def test_without_a_key_changes_stay_local_and_say_so(sqlite_registry: Registry, homes: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    _, reader = homes
    f = write(tmp_path / "s.json", spec("local_only", "Stays local"))
    _, out, _ = noether("stage", "add", "--no-build", str(f), home=reader, env={"NOETHER_REGISTRY": sqlite_registry.url})
    assert out["data"]["lifecycle"] == "active"
    assert out["data"]["registry"]["changed"] is False and "NOETHER_API_KEY" in out["data"]["registry"]["note"]
    assert curl(f"{sqlite_registry.url}/stages/{out['data']['id']}")[0] == 404


def test_sync_is_idempotent(registry: Registry, homes: tuple[Path, Path], tmp_path: Path) -> None:
    publisher, _ = homes
    d = tmp_path / "stages"
    for i in range(3):
        write(d / f"s{i}.json", spec(f"sync_{i}", f"Synced stage number {i}", f"def execute(x):\n    return x + {i}\n",
                                     examples=[{"input": 1, "output": 1 + i}]))
    write(d / "nested" / "s3.json", spec("sync_3", "Synced from a subdirectory"))
    write(d / "broken.json", "{")
    env = {"NOETHER_REGISTRY": registry.url, "NOETHER_API_KEY": API_KEY}
    rc, out, err = noether("stage", "sync", str(d), home=publisher, env=env, check_rc=1)
    data = out["data"]
    assert data["target"] == registry.url
    assert data["counts"] == {"added": 4, "already_present": 0, "failed": 1}
    assert data["failed"][0]["file"].endswith("broken.json") and data["failed"][0]["error"]["code"] == "invalid_json"
    assert err["error"]["code"] == "sync_failed"
    (d / "broken.json").unlink()
    _, again, _ = noether("stage", "sync", str(d), home=publisher, env=env)
    assert again["data"]["counts"] == {"added": 0, "already_present": 4, "failed": 0}
    total = curl(f"{registry.url}/stages?limit=200&offset=0")[1]["result"]["total"]
    _, third, _ = noether("stage", "sync", str(d), home=publisher, env=env)
    assert third["data"]["counts"]["added"] == 0
    assert curl(f"{registry.url}/stages?limit=1")[1]["result"]["total"] == total

    # Without a key: the local store, said so.
    _, local, _ = noether("stage", "sync", str(d), home=publisher, env={"NOETHER_REGISTRY": registry.url})
    assert local["data"]["target"] == "local" and local["data"]["counts"]["added"] == 4
    assert local["data"]["registry"]["changed"] is False


def test_search_local_and_remote(sqlite_registry: Registry, homes: tuple[Path, Path], tmp_path: Path) -> None:
    publisher, reader = homes
    f = write(tmp_path / "t.json", spec("barometric", "Estimate altitude from barometric pressure",
                                        input={"Record": [["pressure_hpa", "Number"]]}, output="Number",
                                        code="def execute(x):\n    return 44330 * (1 - (x['pressure_hpa'] / 1013.25) ** 0.19)\n",
                                        examples=[{"input": {"pressure_hpa": 1013.25}, "output": 0}]))
    noether("stage", "add", str(f), "--registry", sqlite_registry.url, home=publisher, env={"NOETHER_API_KEY": API_KEY})
    env = {"NOETHER_REGISTRY": sqlite_registry.url}
    _, out, _ = noether("stage", "search", "altitude", home=reader, env=env)
    assert out["data"]["results"][0]["name"] == "barometric"
    assert out["data"]["results"][0]["origin"] == sqlite_registry.url
    _, out, _ = noether("stage", "search", "Record{pressure_hpa: Number} -> Number", home=reader, env=env)
    assert out["data"]["results"][0]["name"] == "barometric"
    # Locally alone: the stdlib is searched the same way.
    _, out, _ = noether("stage", "search", "parse CSV", home=reader)
    assert out["data"]["results"][0]["name"] == "csv_parse" and out["data"]["results"][0]["origin"] == "local"


def test_lifecycle_commands_target_the_registry(sqlite_registry: Registry, homes: tuple[Path, Path],
                                                tmp_path: Path) -> None:
    publisher, _ = homes
    env = {"NOETHER_REGISTRY": sqlite_registry.url, "NOETHER_API_KEY": API_KEY}
    a = write(tmp_path / "a.json", spec("lc_a", "First implementation"))
    b = write(tmp_path / "b.json", spec("lc_b", "Second implementation"))
    ida = noether("stage", "add", "--draft", str(a), home=publisher, env=env)[1]["data"]["id"]
    idb = noether("stage", "add", str(b), home=publisher, env=env)[1]["data"]["id"]
    assert curl(f"{sqlite_registry.url}/stages/{ida}")[1]["result"]["lifecycle"] == "Draft"
    noether("stage", "activate", ida[:12], home=publisher, env=env)
    _, out, _ = noether("stage", "deprecate", "lc_a", "--successor", idb[:12], home=publisher, env=env)
    assert out["data"]["successor_id"] == idb and out["data"]["registry"] == sqlite_registry.url
    assert curl(f"{sqlite_registry.url}/stages/{ida}")[1]["result"]["lifecycle"] == {"Deprecated": {"successor_id": idb}}
    rc, _, err = noether("stage", "activate", ida, home=publisher, env=env, check_rc=1)
    assert err["error"]["code"] == "registry_rejected" and sqlite_registry.url in err["error"]["message"]


def test_flag_wins_over_the_variable(sqlite_registry: Registry, homes: tuple[Path, Path]) -> None:
    _, reader = homes
    _, out, _ = noether("stage", "list", "--registry", sqlite_registry.url, home=reader, env={"NOETHER_REGISTRY": dead_url()})
    assert out["data"]["registry"]["url"] == sqlite_registry.url and out["data"]["registry"]["reachable"] is True
    _, out, _ = noether(f"--registry={sqlite_registry.url}", "stage", "list", home=reader, env={"NOETHER_REGISTRY": dead_url()})
    assert out["data"]["registry"]["url"] == sqlite_registry.url
    rc, _, err = noether("stage", "list", "--registry", home=reader, check_rc=2)
    assert err["error"]["code"] == "usage"


def test_errors_name_the_registry(sqlite_registry: Registry, homes: tuple[Path, Path], tmp_path: Path) -> None:
    publisher, reader = homes
    f = write(tmp_path / "s.json", spec("err_stage", "For the errors"))
    dead = dead_url()
    rc, _, err = noether("stage", "add", str(f), home=publisher, env={"NOETHER_REGISTRY": dead,
                                                                      "NOETHER_API_KEY": API_KEY}, check_rc=1)
    assert err["error"]["code"] == "registry_unreachable" and dead in err["error"]["message"]
    rc, _, err = noether("stage", "add", str(f), home=publisher, env={"NOETHER_REGISTRY": sqlite_registry.url,
                                                                      "NOETHER_API_KEY": "wrong"}, check_rc=1)
    assert err["error"]["code"] == "registry_unauthorized" and sqlite_registry.url in err["error"]["message"]
    bad = write(tmp_path / "bad.json", spec("bad_types", "Examples of the wrong type",
                                            examples=[{"input": "one", "output": 2}]))
    rc, _, err = noether("stage", "add", str(bad), home=publisher, env={"NOETHER_REGISTRY": sqlite_registry.url,
                                                                        "NOETHER_API_KEY": API_KEY}, check_rc=1)
    assert err["error"]["code"] == "registry_rejected" and sqlite_registry.url in err["error"]["message"]
    assert err["error"]["details"]["registry_code"] == "VALIDATION_FAILED"
    assert any("example 0 input" in p for p in err["error"]["details"]["problems"])
    # A read that cannot reach the registry shows the local stages and says why it is partial.
    rc, out, err = noether("stage", "list", home=reader, env={"NOETHER_REGISTRY": dead}, check_rc=1)
    assert out["data"]["count"] > 50 and out["data"]["registry"]["reachable"] is False
    assert err["error"]["code"] == "registry_unreachable" and dead in err["error"]["message"]
