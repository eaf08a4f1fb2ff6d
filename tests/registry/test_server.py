"""The registry's HTTP API, driven with curl against SQLite and PostgreSQL."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from tests.registry.conftest import API_KEY, Registry, curl, signed_stage_json, spec

KEY = ["-H", f"X-API-Key: {API_KEY}"]


def publish(reg: Registry, doc: Any, *extra: str) -> tuple[int, Any]:
    return curl("-X", "POST", f"{reg.url}/stages", *KEY, *extra, data=doc)


def test_health_docs_metrics(registry: Registry) -> None:
    status, doc = curl(f"{registry.url}/health")
    assert status == 200 and doc["ok"] is True
    store = doc["result"]["store"]
    assert doc["result"]["status"] == "ok" and doc["result"]["search"] == "lexical"
    assert store["total_stages"] == store["by_lifecycle"]["Active"] > 50  # the stdlib, seeded
    assert store["by_effect"]["pure"] > 10
    status, html = curl(f"{registry.url}/docs")
    assert status == 200 and "/stages/search" in html and "X-API-Key" in html
    status, text = curl(f"{registry.url}/metrics")
    assert status == 200 and 'noether_registry_requests_total{method="GET",route="/health",status="200"} 1' in text


def test_publish_needs_the_key_reads_do_not(registry: Registry, tmp_path: Path) -> None:
    stage = signed_stage_json(spec("add_one", "Add one to a number"), tmp_path)
    status, doc = curl("-X", "POST", f"{registry.url}/stages", data=stage)
    assert status == 401 and doc == {"ok": False, "error": {
        "code": "UNAUTHORIZED", "message": "missing or wrong API key (send it as the X-API-Key header)",
        "reason": "unauthorized"}}
    status, doc = curl("-X", "POST", f"{registry.url}/stages", "-H", "X-API-Key: wrong", data=stage)
    assert status == 401 and doc["error"]["code"] == "UNAUTHORIZED"
    assert curl(f"{registry.url}/stages/{stage['id']}")[0] == 404

    status, doc = publish(registry, stage)
    assert status == 201 and doc["ok"] is True
    assert doc["result"] == {"id": stage["id"], "is_new": True, "lifecycle": "active", "supersedes": [],
                             "warnings": []}
    status, again = publish(registry, stage)
    assert status == 200 and again["result"]["is_new"] is False

    status, got = curl(f"{registry.url}/stages/{stage['id']}")  # no key needed to read
    assert status == 200 and got["result"] == {**stage, "lifecycle": "Active"}
    assert curl(f"{registry.url}/stages/{stage['id'][:12]}")[1]["result"]["id"] == stage["id"]
    assert curl(f"{registry.url}/stages/add_one")[1]["result"]["id"] == stage["id"]
    # Writes other than POST need it too.
    assert curl("-X", "DELETE", f"{registry.url}/stages/{stage['id']}")[0] == 401
    assert curl("-X", "PATCH", f"{registry.url}/stages/{stage['id']}/lifecycle",
                data={"lifecycle": "tombstone"})[0] == 401
    assert curl("-X", "POST", f"{registry.url}/compositions/run", data={"graph": {}})[0] == 401
    assert registry.events("request")[-1]["status"] == 401


def test_validation_failures_give_reasons(registry: Registry, tmp_path: Path) -> None:
    bad_example = signed_stage_json(spec("bad_ex", "Examples of the wrong type",
                                         examples=[{"input": "one", "output": 2}]), tmp_path)
    status, doc = publish(registry, bad_example)
    assert status == 400 and doc["error"]["code"] == "VALIDATION_FAILED"
    assert "example 0 input" in doc["error"]["message"]
    assert doc["error"]["details"]["problems"]

    tampered = dict(signed_stage_json(spec("tamper", "Tampered"), tmp_path))
    tampered["description"] = "Something else"  # not part of the id: the signature still verifies
    tampered["implementation_code"] = "def execute(x):\n    return 0\n"
    status, doc = publish(registry, tampered)
    assert status == 400 and doc["error"]["code"] == "VALIDATION_FAILED"
    assert doc["error"]["reason"] == "hash_mismatch"

    forged = dict(signed_stage_json(spec("forged", "Forged signature"), tmp_path))
    forged["ed25519_signature"] = "00" * 64
    status, doc = publish(registry, forged)
    assert status == 400 and "bad_signature" in doc["error"]["message"]

    empty = signed_stage_json(spec("quiet", " "), tmp_path)
    status, doc = publish(registry, empty)
    assert status == 400 and "description" in doc["error"]["message"]

    status, doc = publish(registry, "{not json")
    assert status == 400 and doc["error"]["code"] == "VALIDATION_FAILED"


def test_unsigned_spec_files_stay_drafts(registry: Registry, tmp_path: Path) -> None:
    # What the Building Custom Stages guide posts with curl: a spec file, unsigned.
    status, doc = publish(registry, spec("curl_posted", "Posted with curl"))
    assert status == 201 and doc["result"]["lifecycle"] == "draft" and doc["result"]["warnings"]
    sid = doc["result"]["id"]
    status, doc = curl("-X", "PATCH", f"{registry.url}/stages/{sid}/lifecycle", *KEY, data={"lifecycle": "active"})
    assert status == 400 and "no valid signature" in doc["error"]["message"]
    listed = curl(f"{registry.url}/stages?lifecycle=draft")[1]["result"]
    assert [s["id"] for s in listed["stages"]] == [sid] and listed["total"] == 1
    # The same stage uploaded signed (what `noether stage add` sends) takes the signature and is activated.
    signed = signed_stage_json(spec("curl_posted", "Posted with curl"), tmp_path)
    assert signed["id"] == sid
    status, doc = publish(registry, signed)
    assert status == 200 and doc["result"]["is_new"] is False and doc["result"]["lifecycle"] == "active"
    got = curl(f"{registry.url}/stages/{sid}")[1]["result"]
    assert got["ed25519_signature"] == signed["ed25519_signature"] and got["lifecycle"] == "Active"


def test_auto_deprecation_and_lifecycle(registry: Registry, tmp_path: Path) -> None:
    v1 = signed_stage_json(spec("scale", "Scale a number", "def execute(x):\n    return x * 2\n",
                                examples=[{"input": 1, "output": 2}]), tmp_path)
    v2 = signed_stage_json(spec("scale", "Scale a number", "def execute(x):\n    return x + x\n",
                                examples=[{"input": 1, "output": 2}]), tmp_path)
    assert publish(registry, v1)[1]["result"]["lifecycle"] == "active"
    res = publish(registry, v2)[1]["result"]
    assert res["lifecycle"] == "active" and res["supersedes"] == [v1["id"]]
    old = curl(f"{registry.url}/stages/{v1['id']}")[1]["result"]
    assert old["lifecycle"] == {"Deprecated": {"successor_id": v2["id"]}}
    # By name, the Active one.
    assert curl(f"{registry.url}/stages/scale")[1]["result"]["id"] == v2["id"]

    status, doc = curl("-X", "PATCH", f"{registry.url}/stages/{v2['id']}/lifecycle", *KEY,
                       data={"lifecycle": "tombstone"})
    assert status == 200 and doc["result"]["lifecycle"] == "tombstone"
    status, doc = curl("-X", "PATCH", f"{registry.url}/stages/{v2['id']}/lifecycle", *KEY,
                       data={"lifecycle": "active"})
    assert status == 409 and doc["error"]["code"] == "CONFLICT"
    # v1 names v2 as successor: v2 cannot be deleted; v1 can.
    status, doc = curl("-X", "DELETE", f"{registry.url}/stages/{v2['id']}", *KEY)
    assert status == 409
    assert curl("-X", "DELETE", f"{registry.url}/stages/{v1['id']}", *KEY)[0] == 200
    assert curl(f"{registry.url}/stages/{v1['id']}")[1]["error"]["code"] == "NOT_FOUND"
    assert curl("-X", "DELETE", f"{registry.url}/stages/{v1['id']}", *KEY)[1]["error"]["code"] == "NOT_FOUND"


def test_pagination_bounds(registry: Registry) -> None:
    first = curl(f"{registry.url}/stages")[1]["result"]
    total = first["total"]
    assert len(first["stages"]) == 50 and first["limit"] == 50 and total > 50
    seen: list[str] = []
    for offset in range(0, total + 200, 200):
        page = curl(f"{registry.url}/stages?limit=200&offset={offset}")[1]["result"]
        seen += [s["id"] for s in page["stages"]]
    assert len(seen) == len(set(seen)) == total and seen == sorted(seen)
    assert curl(f"{registry.url}/stages?offset={total}")[1]["result"]["stages"] == []
    for bad in ("limit=0", "limit=201", "limit=-5", "limit=abc", "offset=-1", "offset=1e3", "lifecycle=zombie",
                "limit=99999999999999999999999"):
        status, doc = curl(f"{registry.url}/stages?{bad}")
        assert status == 400 and doc["error"]["code"] == "VALIDATION_FAILED", bad
    assert curl(f"{registry.url}/stages/search?q=text&limit=201")[0] == 400
    assert curl(f"{registry.url}/stages?limit=200")[1]["result"]["limit"] == 200


def test_search_by_description_word_and_by_signature(registry: Registry, tmp_path: Path) -> None:
    temp = signed_stage_json(spec(
        "fahrenheit_from_celsius", "Convert a temperature from celsius to fahrenheit",
        "def execute(x):\n    return {'fahrenheit': x['celsius'] * 9 / 5 + 32}\n",
        input={"Record": [["celsius", "Number"]]}, output={"Record": [["fahrenheit", "Number"]]},
        examples=[{"input": {"celsius": 100}, "output": {"fahrenheit": 212}}]), tmp_path)
    assert publish(registry, temp)[0] == 201
    found = curl(f"{registry.url}/stages/search?q=temperature")[1]["result"]
    assert found["results"][0]["id"] == temp["id"] and found["mode"] == "lexical"
    # By type signature, field labels aside: input and output apart.
    found = curl(f"{registry.url}/stages/search", "-G", "--data-urlencode",
                 "q=Record{celsius: Number} -> Record{fahrenheit: Number}")[1]["result"]
    assert found["results"][0]["id"] == temp["id"]
    assert found["results"][0]["ranks"] == {"signature": 1}
    found = curl(f"{registry.url}/stages/search", "-G", "--data-urlencode", "q=Text -> Number")[1]["result"]
    assert found["results"][0]["name"] == "text_length"
    # Only Active stages by default; an empty query is refused.
    assert curl(f"{registry.url}/stages/search?q=")[0] == 400


def test_body_cap_and_slow_bodies(start_registry: Any, backend_env: dict[str, str]) -> None:
    reg = start_registry({**backend_env, "NOETHER_REGISTRY_MAX_BODY_BYTES": "4096",
                          "NOETHER_REGISTRY_REQUEST_TIMEOUT_S": "1.5"})
    status, doc = curl("-X", "POST", f"{reg.url}/stages", *KEY, data={"pad": "x" * 10_000})
    assert status == 413 and doc["error"]["code"] == "PAYLOAD_TOO_LARGE"
    # A body that trickles in is cut off at the request timeout.
    with socket.create_connection(("127.0.0.1", reg.port), timeout=10) as s:
        s.sendall(b"POST /stages HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n"
                  + f"x-api-key: {API_KEY}\r\ncontent-type: application/json\r\n\r\n".encode() + b"{")
        started = time.monotonic()
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        assert data.startswith(b"HTTP/1.1 408"), data
        assert time.monotonic() - started < 8
    assert curl(f"{reg.url}/health")[0] == 200
    deadline = time.monotonic() + 10  # the log line is read from the server's stderr by a thread
    while not any(e["status"] == 408 for e in reg.events("request")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(e["status"] == 408 for e in reg.events("request"))


def test_compositions_run(registry: Registry) -> None:
    graph = {"description": "upper", "version": "0.1", "root": {"op": "Stage", "id": "text_upper"}}
    status, doc = curl("-X", "POST", f"{registry.url}/compositions/run", *KEY,
                       data={"graph": graph, "input": "hello", "dry_run": True})
    assert status == 200 and doc["result"]["dry_run"] is True, doc
    status, doc = curl("-X", "POST", f"{registry.url}/compositions/run", *KEY, data={"graph": graph, "input": "hello"})
    assert status == 200 and doc["result"]["status"] == "ok" and doc["result"]["output"] == "HELLO"
    assert doc["result"]["trace"]["stages"][0]["status"] == "Ok"
    status, doc = curl("-X", "POST", f"{registry.url}/compositions/run", *KEY,
                       data={"graph": graph, "input": "x", "options": {"isolate": "none"}})
    assert status == 400 and "isolate" in doc["error"]["message"]


def test_stages_dir_is_loaded_at_start(start_registry: Any, backend_env: dict[str, str], tmp_path: Path) -> None:
    d = tmp_path / "stages"
    (d / "sub").mkdir(parents=True)
    (d / "a.json").write_text(json.dumps(signed_stage_json(spec("from_dir", "Loaded from the directory"), tmp_path)))
    (d / "sub" / "b.json").write_text(json.dumps(spec("unsigned_dir", "Unsigned, from the directory")))
    (d / "broken.json").write_text("{")
    reg = start_registry({**backend_env, "NOETHER_STAGES_DIR": str(d)})
    assert curl(f"{reg.url}/stages/from_dir")[1]["result"]["lifecycle"] == "Active"
    assert curl(f"{reg.url}/stages/unsigned_dir")[1]["result"]["lifecycle"] == "Draft"
    loaded = reg.events("stages_dir_loaded")[0]
    assert (loaded["added"], loaded["failed"]) == (2, 1)


def test_read_only_and_open_registries(start_registry: Any, tmp_path: Path) -> None:
    stage = signed_stage_json(spec("open_one", "For the open registry"), tmp_path)
    read_only = start_registry({"NOETHER_API_KEY": None})  # unset: writes are refused, whatever key is sent
    assert read_only.events("writes_disabled")
    status, doc = curl("-X", "POST", f"{read_only.url}/stages", *KEY, data=stage)
    assert status == 401 and "accepts no writes" in doc["error"]["message"]
    assert curl(f"{read_only.url}/stages?limit=1")[0] == 200
    open_reg = start_registry({"NOETHER_API_KEY": ""})  # empty: no authentication, said loudly
    assert open_reg.events("auth_disabled")
    assert curl("-X", "POST", f"{open_reg.url}/stages", data=stage)[0] == 201
