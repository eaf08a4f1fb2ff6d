"""Bad input gets a 4xx or a stage error with a code, never a 500 (security finding 9).

Through a live daemon: request bodies nested past what can be read, query
numbers that overflow, integers and text JSON cannot carry, malformed
environment names, and stage outputs with NaN, Infinity, 1e400, huge
integers or lone surrogates (which used to become ``null`` or an
``internal_error``). The embedded engine's side is tests/engine/test_value_checks.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.engine.test_value_checks import EMIT_RAW, NON_JSON_OUTPUTS
from tests.server.live import HELLO, Live, start_live, status_of

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    daemon = start_live(tmp_path_factory.mktemp("bad-input"))
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def emit_raw(live: Live) -> str:
    spec = {"name": "emit_raw", "input": "Text", "output": "Any", "implementation": EMIT_RAW}
    added = live.client(timeout=300).call("POST", "/v1/stages", {"spec": spec, "build": True})
    return str(added["id"])


@pytest.fixture(autouse=True)
def no_500s(live: Live) -> Iterator[None]:
    before = len(live.crashes())
    yield
    assert live.proc.poll() is None, f"the daemon died: {live.tail()}"
    assert live.crashes()[before:] == []


def post(live: Live, path: str, body: bytes) -> tuple[int | None, Any]:
    answer = live.raw(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: "
                      + str(len(body)).encode() + b"\r\n\r\n" + body, timeout=120)
    status = status_of(answer)
    payload = answer.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in answer else b""
    if status == 200 and path == "/v1/runs":  # chunked NDJSON: the last line is the run's end
        lines = [line for line in payload.split(b"\r\n") if line.startswith(b"{")]
        return status, json.loads(lines[-1])
    return status, json.loads(payload) if payload else None


def graph(root: Any) -> bytes:
    return json.dumps({"description": "d", "version": "1", "root": root}).encode()


@pytest.mark.parametrize("depth", [129, 990, 5000, 200_000])
@pytest.mark.parametrize("path", ["/v1/check", "/v1/runs"])
def test_a_deep_request_is_a_4xx(live: Live, path: str, depth: int) -> None:
    deep = b"[" * depth + b"]" * depth
    status, doc = post(live, path, b'{"graph": ' + graph({"op": "Stage", "id": "identity"}) + b', "input": '
                       + deep + b"}")
    assert status in (400, 413, 422), (status, doc)
    assert doc["error"]["code"] in ("invalid_json", "value_too_deep", "body_too_large"), doc
    deep_graph = b'{"op": "Sequential", "stages": [' * depth + b'{"op": "Stage", "id": "identity"}' + b"]}" * depth
    status, doc = post(live, path, b'{"graph": {"description": "d", "version": "1", "root": ' + deep_graph + b"}}")
    assert status in (400, 413), (status, doc)
    assert doc["error"]["code"] in ("invalid_json", "graph_too_deep", "body_too_large"), doc


@pytest.mark.parametrize("limit", ["99999999999999999999999", "1e400", "-1", "0", "10001", "1.5", "abc", "", "NaN"])
def test_runs_list_limit_out_of_range_is_a_400(live: Live, limit: str) -> None:
    status, doc = live.client().request("GET", f"/v1/runs?limit={limit}")
    assert status == 400 and doc["error"]["code"] == "usage", doc
    assert live.client().request("GET", "/v1/runs?limit=10000")[0] == 200


@pytest.mark.parametrize(("value", "code"), [
    (b"9" * 400, "non_finite_number"), (b"-" + b"9" * 4000, "non_finite_number"),
    (b"9" * 5000, "invalid_json"), (b"1e400", "invalid_json"), (b'"\\ud800"', "invalid_json"),
    (b'{"k": "\\udfff"}', "invalid_json"),
])
@pytest.mark.parametrize("where", ["input", "const"])
def test_numbers_and_text_json_cannot_carry_are_a_400(live: Live, value: bytes, code: str, where: str) -> None:
    if where == "input":
        body = b'{"graph": ' + graph({"op": "Stage", "id": "identity"}) + b', "input": ' + value + b"}"
    else:
        body = (b'{"graph": {"description": "d", "version": "1", "root": {"op": "Const", "value": [' + value
                + b"]}}}")
    for path in ("/v1/check", "/v1/runs"):
        status, doc = post(live, path, body)
        assert status == 400, (path, status, doc)
        assert doc["error"]["code"] == code, doc


@pytest.mark.parametrize("env", [{"A=B": "x"}, {"": "x"}, {"1A": "x"}, {"A B": "x"}, {"A\u0000": "x"},
                                 {"A": "x\u0000y"}, {"A": 1}, {"\u00e9": "x"}])
def test_malformed_environment_names_and_values_are_a_4xx(live: Live, env: dict[str, Any]) -> None:
    body = json.dumps({"graph": json.loads(graph({"op": "Stage", "id": "env_get"})), "input": {"name": "A"},
                       "options": {"env": env}}).encode()
    status, doc = post(live, "/v1/runs", body)
    assert status is not None and 400 <= status < 500, (status, doc)
    assert doc["error"]["code"] in ("usage", "env_not_allowed", "invalid_env"), doc


@pytest.mark.parametrize(("raw", "code"), NON_JSON_OUTPUTS, ids=[c[0][:12] for c in NON_JSON_OUTPUTS])
def test_a_stage_output_json_cannot_carry_is_a_stage_error(live: Live, emit_raw: str, raw: str, code: str) -> None:
    events = list(live.client(timeout=120).run(json.loads(graph({"op": "Stage", "id": emit_raw})), raw))
    last = events[-1]
    assert last["event"] == "run_finished" and last["status"] == "failed", last
    assert last["error"]["code"] == code and last["output"] is None, last["error"]
    finished = [e for e in events if e["event"] == "stage_finished"]
    assert finished and finished[-1]["status"] != "ok"


def test_a_stage_output_json_cannot_carry_fails_a_concurrent_graph_too(live: Live, emit_raw: str) -> None:
    bad = {"op": "Sequential", "stages": [{"op": "Const", "value": "[1, NaN]"}, {"op": "Stage", "id": emit_raw}]}
    mapped = {"op": "Sequential", "stages": [{"op": "Const", "value": ["2", '"\\udc00"', "3"]},
                                             {"op": "Stage", "id": "map", "config": {"stage_id": emit_raw}}]}
    for branch, code in ((bad, "non_finite_number"), (mapped, "invalid_text")):
        root = {"op": "Parallel", "branches": {"a": {"op": "Stage", "id": "text_upper"}, "b": branch}}
        last = list(live.client(timeout=120).run(json.loads(graph(root)), "1"))[-1]
        assert last["status"] == "failed" and last["error"]["code"] == code, last["error"]
    live.serves_a_run()


def test_the_daemon_counts_no_internal_errors(live: Live) -> None:
    assert list(live.client().run(HELLO, "ok"))[-1]["output"] == "OK"
    assert '"internal_error"' not in live.log.read_text(errors="replace")
