"""The daemon's HTTP surface, fuzzed through a live daemon (issue 13).

Raw bytes (request lines, heads, bodies, chunked encoding, pipelining) and
JSON shapes against every endpoint in ``service.endpoints.ENDPOINTS`` with
random path segments, query strings and bodies. Every answer must be a 4xx
or a 2xx with its envelope (or a closed connection for bytes that are not
HTTP), never a 5xx; no exception may escape a request or a connection, no
request may hang, and the daemon serves a run afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from noether_nix.service.endpoints import BY_NAME, ENDPOINTS, Endpoint
from tests.fuzz.strategies import (
    PURE_NAMES,
    awkward_text,
    budget,
    graph_docs,
    option_docs,
    runnable_graphs,
    spec_docs,
    wire_json,
    wire_scalars,
)
from tests.server.live import Live, start_live

pytestmark = pytest.mark.slow

# Endpoints whose work is long by design (every stage's examples, Nix builds): fuzzed
# for their input handling with references that match nothing, not run for real.
SLOW = {"test_all", "warmup"}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    daemon = start_live(tmp_path_factory.mktemp("fuzz-http"), {"header_timeout_s": 5, "max_body_bytes": 256 << 10})
    try:
        yield daemon
        assert daemon.proc.poll() is None, f"the daemon died: {daemon.tail()}"
        daemon.serves_a_run()
        assert daemon.crashes() == [], daemon.crashes()[:3]
        assert daemon.counters()["connection_errors"] == 0
    finally:
        daemon.stop()


def answers(raw: bytes) -> list[tuple[int | None, bytes]]:
    """The status and body of each answer in what came back (several when pipelined),
    read by their framing (Content-Length or chunked), as a client would."""
    out: list[tuple[int | None, bytes]] = []
    rest = raw
    while rest:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status_line = lines[0].split(b" ")
        if not sep or status_line[0] != b"HTTP/1.1" or len(status_line) < 2 or not status_line[1].isdigit():
            out.append((None, head))
            break
        status = int(status_line[1])
        fields = dict(line.lower().split(b": ", 1) for line in lines[1:] if b": " in line)
        if 100 <= status < 200:
            continue
        if rest.startswith(b"HTTP/1.1 "):  # an answer to HEAD: its length, and no body
            body = b""
        elif b"content-length" in fields:
            n = int(fields[b"content-length"])
            body, rest = rest[:n], rest[n:]
        elif fields.get(b"transfer-encoding") == b"chunked":
            body = b""
            while rest:
                size_line, _, rest = rest.partition(b"\r\n")
                n = int(size_line, 16)
                body, rest = body + rest[:n], rest[n + 2:]
                if n == 0:
                    break
        else:
            body, rest = rest, b""
        out.append((status, body))
    return out


def assert_no_5xx(raw: bytes, what: Any) -> None:
    if raw and not raw.startswith(b"HTTP/1.1 "):
        pytest.fail(f"not HTTP back for {what!r}: {raw[:200]!r}")
    for status, _ in answers(raw):
        assert status is not None and status < 500, (what, raw[:600])


# ------------------------------------------------------------------ JSON shapes per endpoint

def segment() -> st.SearchStrategy[str]:
    return st.one_of(awkward_text, st.sampled_from(["text_upper", "zz-no-such", "%", "..", "a/b", ""])).map(
        lambda s: quote(s, safe="") or "x")


def query(endpoint: Endpoint) -> st.SearchStrategy[str]:
    names = st.sampled_from([*endpoint.params.__struct_fields__, "nope", "limit", "tag", ""])
    values = st.one_of(awkward_text, st.sampled_from(["1", "0", "-1", "1e400", "99999999999999999999", "true",
                                                      "Active", "all", "%ff"]))
    return st.lists(st.tuples(names, values), max_size=4).map(
        lambda pairs: "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs))


pure_graph = graph_docs(st.sampled_from(PURE_NAMES))


def body(endpoint: Endpoint) -> st.SearchStrategy[Any]:
    fields: dict[str, st.SearchStrategy[Any]] = {
        "graph": st.integers(0, 3).flatmap(lambda i: pure_graph if i == 0 else runnable_graphs), "input": wire_json,
        "options": st.one_of(st.none(), st.just({}), st.just({"optimize": False, "timeout_secs": 5}), option_docs), "check_input": st.one_of(st.booleans(), st.booleans(), wire_scalars),
        "spec": spec_docs, "draft": wire_scalars, "doc": wire_json, "source": awkward_text,
        "refs": st.lists(awkward_text.map(lambda s: f"zz-{s}"), max_size=2), "lifecycle": awkward_text,
        "successor": awkward_text | st.none(), "ref": awkward_text.map(lambda s: f"zz-{s}"),
    }
    known = {k: fields.get(k, wire_json) for k in endpoint.params.__struct_fields__ if k != "build"}
    required = {k: known.pop(k) for k in ("graph",) if k in known}
    shaped = st.fixed_dictionaries(required, optional=known)
    junk = st.dictionaries(awkward_text, wire_json, max_size=3)
    # Mostly shaped like the endpoint's parameters (one_of would weigh the three alike).
    return st.integers(0, 9).flatmap(lambda i: shaped if i < 8 else junk if i == 8 else wire_json)


@st.composite
def endpoint_requests(draw: st.DrawFn) -> tuple[str, str, bytes]:
    # Half the time a run or a check: the largest surface behind one request.
    endpoint = draw(st.one_of(st.sampled_from(ENDPOINTS), st.sampled_from([BY_NAME["run"], BY_NAME["check"]])))
    path = endpoint.path
    while "{" in path:
        start, end = path.index("{"), path.index("}")
        seg = draw(segment())
        if endpoint.write or endpoint.name in SLOW or endpoint.name == "stage_test":
            seg = "zz-" + seg  # matches no stage: never changes or runs the store's stages
        path = path[:start] + seg + path[end + 1:]
    method = draw(st.sampled_from([endpoint.method] * 4 + ["GET", "POST", "DELETE", "PUT", "PATCH"]))
    if endpoint.name in SLOW and method == endpoint.method:
        method = "PUT"  # answered 405: its handler (minutes of work) is not what is fuzzed here
    q = draw(query(endpoint))
    target = path + (f"?{q}" if q else "")
    payload = b""
    if method in ("POST", "PATCH", "PUT"):
        doc = draw(body(endpoint))
        if isinstance(doc, dict):
            doc.pop("build", None)  # never a Nix build of generated code
        payload = json.dumps(doc).encode() if draw(st.integers(0, 19)) else draw(st.binary(max_size=40))
    return method, target, payload


@settings(max_examples=budget(2500))
@given(req=endpoint_requests())
def test_every_endpoint_with_random_parameters(live: Live, req: tuple[str, str, bytes]) -> None:
    method, target, payload = req
    head = f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
    if payload or method in ("POST", "PATCH", "PUT"):
        head += b"Content-Length: " + str(len(payload)).encode() + b"\r\n"
    raw = live.raw(head + b"\r\n" + payload, timeout=60)
    assert raw, f"no answer to {req!r} within 60 s"
    assert_no_5xx(raw, req)
    status, rest = answers(raw)[0]
    event(f"{method} {target.split('?')[0].split('/')[2] if target.count('/') > 1 else target}: {status}")
    if status == 200 and method == "POST" and target.split("?")[0] == "/v1/runs":
        last = json.loads(rest.splitlines()[-1])
        assert last["event"] == "run_finished", last
        assert (last.get("error") or {}).get("code") != "internal_error", last["error"]
    elif status is not None and status != 200:
        doc = json.loads(rest)
        assert doc["ok"] is False and doc["error"]["code"] != "internal_error", doc
        event(f"{method} {target.split('?')[0]}: {doc['error']['code']}")


# ------------------------------------------------------------------ raw bytes

token = st.one_of(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"HEAD", b"OPTIONS", b"CONNECT",
                                   b"TRACE", b"PRI", b""]), st.binary(min_size=1, max_size=8))
targets = st.one_of(st.sampled_from([b"/v1/health", b"/v1/runs", b"/v1/check", b"/v1/stages/text_upper", b"*",
                                     b"/metrics", b"http://x/v1/health", b"/v1/runs?limit=1e400", b""]),
                    st.binary(max_size=30))
versions = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 ", b"http/1.1", b"", b"HTTP/9"])
header_names = st.one_of(st.sampled_from([b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection",
                                          b"Expect", b"Content-Type", b"Upgrade", b"X-A"]), st.binary(max_size=12))
header_values = st.one_of(st.sampled_from([b"x", b"chunked", b"close", b"keep-alive", b"100-continue", b"0", b"-1",
                                           b"5", b"99999999999999999999", b"gzip, chunked", b"\xff\xfe", b"a\rb",
                                           b" "]), st.binary(max_size=20))


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    line = draw(token) + b" " + draw(targets) + b" " + draw(versions)
    headers = draw(st.lists(st.tuples(header_names, header_values), max_size=6))
    body = draw(st.one_of(st.just(b""), st.binary(max_size=64), wire_json.map(lambda v: json.dumps(v).encode())))
    if draw(st.booleans()):  # chunked, sometimes with lying sizes
        sizes = draw(st.lists(st.integers(0, 80), max_size=4))
        chunks = b""
        rest = body
        for n in sizes:
            piece, rest = rest[:n], rest[n:]
            size = draw(st.sampled_from([n, n + 1, max(n - 1, 0)])) if draw(st.booleans()) else n
            chunks += b"%x\r\n%s\r\n" % (size, piece)
        body = chunks + draw(st.sampled_from([b"0\r\n\r\n", b"", b"0\r\nX-T: 1\r\n\r\n", b"zz\r\n"]))
        headers.append((b"Transfer-Encoding", b"chunked"))
    elif body and draw(st.booleans()):
        headers.append((b"Content-Length", str(len(body) + draw(st.integers(-3, 3))).encode()))
    sep = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n"]))
    request = line + sep + b"".join(k + b": " + v + sep for k, v in headers) + sep + body
    if draw(st.integers(0, 4)) == 0:  # pipelined behind a valid request
        request = b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n" + request
    return request


@settings(max_examples=budget(2500))
@given(request=raw_requests())
def test_raw_bytes(live: Live, request: bytes) -> None:
    raw = live.raw(request, timeout=30, shut=True)
    assert_no_5xx(raw, request)
    event(f"statuses: {[s for s, _ in answers(raw)]}")
