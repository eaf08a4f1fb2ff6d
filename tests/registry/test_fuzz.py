"""Hostile input over the whole HTTP surface: no 5xx, no crash (bounded budget)."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.registry.conftest import API_KEY, Registry, curl, signed_stage_json, spec

SEGMENTS = st.one_of(
    st.sampled_from(["stages", "search", "lifecycle", "health", "docs", "metrics", "compositions", "run", "..", ".",
                     "%2F", "%00", "a" * 300, "0" * 64, "text_upper", "%E2%86%92", "%ZZ"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20).map(lambda t: quote(t, safe="")),
)
PATHS = st.one_of(
    st.sampled_from(["/", "/health", "/docs", "/metrics", "/stages", "/stages/search", "/compositions/run",
                     "/stages/text_upper", "/stages/text_upper/lifecycle"]),
    st.lists(SEGMENTS, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts)),
)
QUERY_VALUES = st.one_of(st.integers(-(2**70), 2**70).map(str), st.sampled_from(["", "all", "active", "1e9", "NaN",
                                                                                  "-0", " 5", "Text -> Number"]),
                         st.text(max_size=30))
QUERIES = st.one_of(
    st.dictionaries(st.sampled_from(["limit", "offset", "q", "lifecycle", "tag", "draft", "x"]), QUERY_VALUES,
                    max_size=4),
    # Raw query strings: repeated and odd fields, stray escapes.
    st.lists(st.sampled_from(["a=1", "limit=5", "q=%FF", "&", "=", "%", "x", "limit", "q=a+b"]), max_size=60).map(
        "&".join))
JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
                    | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=20)


_VALID: dict[str, Any] = {}
_GRAPH = {"description": "fuzz", "version": "0.1", "root": {"op": "Sequential", "stages": [
    {"op": "Stage", "id": "text_upper"}, {"op": "Stage", "id": "text_length"}]}}
_NESTED = [("signature", "input"), ("signature", "output"), ("signature", "effects"), ("signature",),
           ("examples",), ("lifecycle",), ("id",), ("name",), ("implementation_code",), ("properties",), ("tags",)]


def _mutate(doc: Any, draw: Any, paths: list[tuple[str, ...]]) -> Any:
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(paths))
        node = doc
        for key in where[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node[where[-1]] = draw(JSON)
    return doc


@st.composite
def bodies(draw: Any) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return b""
    if kind == 1:
        return draw(st.binary(max_size=200))
    if kind == 2:
        return json.dumps(draw(JSON)).encode()
    return json.dumps(_mutate(_VALID, draw, _NESTED)).encode()


@st.composite
def targeted(draw: Any) -> tuple[str, str, dict[str, str], bytes, bool]:
    """Requests aimed at the routes that parse and store input, with the key."""
    which = draw(st.integers(0, 4))
    if which == 0:
        spec_like = {"name": draw(st.text(max_size=10)), "input": draw(JSON), "output": draw(JSON),
                     "implementation": draw(st.text(max_size=40)), "examples": draw(JSON)}
        body = json.dumps(draw(st.sampled_from([spec_like, _mutate(_VALID, draw, _NESTED)]))).encode()
        return "POST", "/stages", {}, body, True
    if which == 1:
        ref = draw(st.sampled_from([_VALID["id"], "text_upper", "fuzz_base", "0" * 64, "ab"]))
        body = json.dumps({"lifecycle": draw(st.sampled_from(["active", "deprecated", "tombstone", "draft", "",
                                                               "x"])),
                           "successor_id": draw(st.sampled_from([None, "text_lower", _VALID["id"], "zz"]))}).encode()
        return "PATCH", f"/stages/{ref}/lifecycle", {}, body, True
    if which == 2:
        run = {"graph": draw(st.one_of(JSON, st.just(_GRAPH).map(lambda g: _mutate(g, draw, [
            ("root", "op"), ("root", "stages"), ("root",), ("version",)])))),
               "input": draw(JSON), "dry_run": draw(st.booleans())}
        return "POST", "/compositions/run", {}, json.dumps(run).encode(), True
    if which == 3:
        return "GET", "/stages/search", {"q": draw(st.text(min_size=1, max_size=80)),
                                         "limit": str(draw(st.integers(-5, 300)))}, b"", False
    return "GET", "/stages", draw(QUERIES), b"", False


@pytest.fixture(scope="module")
def fuzz_registry(tmp_path_factory: pytest.TempPathFactory) -> Any:
    home = tmp_path_factory.mktemp("fuzz-home")
    _VALID.update(signed_stage_json(spec("fuzz_base", "The stage the fuzzer mutates"), home))
    reg = Registry(home, {"NOETHER_API_KEY": API_KEY, "NOETHER_REGISTRY_MAX_BODY_BYTES": "65536",
                          "NOETHER_REGISTRY_MAX_RUNS": "1"})
    yield reg
    reg.stop()


RANDOM = st.tuples(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]), PATHS, QUERIES,
                   bodies(), st.booleans())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(request=st.one_of(RANDOM, targeted()),
       ctype=st.sampled_from(["application/json", "text/plain", "", "application/json; charset=latin-1"]))
def test_no_input_makes_a_5xx(fuzz_registry: Registry, request: tuple[str, str, Any, bytes, bool],
                              ctype: str) -> None:
    method, path, query, body, with_key = request
    target = path + ("?" + (urlencode(query) if isinstance(query, dict) else query) if query else "")
    headers = {"content-type": ctype} if ctype else {}
    if with_key:
        headers["x-api-key"] = API_KEY
    conn = http.client.HTTPConnection("127.0.0.1", fuzz_registry.port, timeout=30)
    try:
        conn.request(method, target, body=body if method not in ("GET", "HEAD") else None, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    assert resp.status < 500, (method, target, body[:200], raw[:500])
    if (resp.getheader("content-type") or "").startswith("application/json") and method != "HEAD":
        assert json.loads(raw)["ok"] is (resp.status < 400), raw[:300]


def test_malformed_http_and_the_server_lives_on(fuzz_registry: Registry) -> None:
    garbage = [b"\x00\xff\xfe garbage\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
               b"POST /stages HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\n\r\n",
               b"POST /stages HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
               b"GET /health HTTP/1.1\r\n" + b"x-h: " + b"v" * 40_000 + b"\r\n\r\n"]
    for raw in garbage:
        with socket.create_connection(("127.0.0.1", fuzz_registry.port), timeout=15) as s:
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        if answer:
            assert not answer.startswith(b"HTTP/1.1 5"), (raw[:60], answer[:200])
    assert fuzz_registry.alive()
    # Invented methods do not grow the metrics: they count as OTHER.
    for i in range(3):
        with socket.create_connection(("127.0.0.1", fuzz_registry.port), timeout=15) as s:
            s.sendall(f"FOO{i} /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
            while s.recv(65536):
                pass
    metrics = curl(f"{fuzz_registry.url}/metrics")[1]
    assert "FOO" not in metrics and 'method="OTHER",route="/health",status="405"} 3' in metrics
    # Query strings the parser refuses (too many fields) are the client's error.
    status, doc = curl(f"{fuzz_registry.url}/stages?" + "&".join(["a=1"] * 40))
    assert status == 400 and doc["error"]["code"] == "VALIDATION_FAILED"
    status, doc = curl(f"{fuzz_registry.url}/health")
    assert status == 200 and doc["ok"] is True
    assert not fuzz_registry.events("request_failed")
