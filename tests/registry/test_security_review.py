"""Security review of the registry: what a key holder may run on the registry
host, what a hostile registry can make a client resolve, and the bounds on
the client and on the embedding provider.

Each test is named after its finding and fails on the code before the fix.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from noether_nix.errors import NoetherError
from noether_nix.graph.resolve import resolve_ref
from noether_nix.registry.backend import SqliteBackend
from noether_nix.registry.client import RegistryCache, RegistryClient, RegistrySource
from noether_nix.registry.embeddings import EmbeddingProvider, config_from_env
from noether_nix.store.remote import set_remote_source
from noether_nix.store.stages import StageStore
from tests.fake_http import QuietHandler, serve, served
from tests.registry.conftest import API_KEY, Registry, curl, signed_stage_json, spec
from tests.registry.test_embeddings import FakeEmbeddings

KEY = ["-H", f"X-API-Key: {API_KEY}"]

FETCH = "import urllib.request\n\ndef execute(x):\n    with urllib.request.urlopen(x['url'], timeout=5) as r:\n" \
        "        return r.read().decode()\n"


def _fetch_stage(home: Path) -> dict[str, Any]:
    return signed_stage_json(spec("fetch_from_registry_host", "Fetch a URL from wherever it runs", FETCH,
                                  input={"Record": [["url", "Text"]]}, output="Text", effects=["Network", "Fallible"],
                                  capabilities=["Network"], examples=[{"input": {"url": "http://x"}, "output": "x"}]),
                             home)


def _run(reg: Registry, stage_id: str, value: Any, **options: Any) -> tuple[int, Any]:
    graph = {"description": "fetch", "version": "0.1", "root": {"op": "Stage", "id": stage_id}}
    return curl("-X", "POST", f"{reg.url}/compositions/run", *KEY,
                data={"graph": graph, "input": value, "options": options})


@pytest.mark.slow
def test_a_key_holder_gets_no_network_or_files_on_the_registry_host(start_registry: Any, tmp_path: Path,
                                                                     local_http_server: str) -> None:
    """POST /compositions/run ran any effect a published stage declared, as the
    registry's user on the registry's host: Network reached the registry's own
    network (its database, metadata services), FsRead / FsWrite its files."""
    reg = start_registry({})
    stage = _fetch_stage(tmp_path)
    status, doc = curl("-X", "POST", f"{reg.url}/stages", *KEY, data=stage)
    assert status == 201, doc
    status, doc = _run(reg, stage["id"], {"url": local_http_server})
    assert status == 400 and doc["error"]["reason"] == "effect_not_allowed", doc
    status, doc = _run(reg, stage["id"], {"url": local_http_server}, allow_effects=["network", "fallible"])
    assert status == 400 and "NOETHER_REGISTRY_RUN_EFFECTS" in doc["error"]["message"], doc
    # The operator may grant it.
    open_reg = start_registry({"NOETHER_REGISTRY_RUN_EFFECTS": "pure,fallible,network",
                               "NOETHER_REGISTRY_RUN_CAPABILITIES": "network"})
    assert curl("-X", "POST", f"{open_reg.url}/stages", *KEY, data=stage)[0] == 201
    status, doc = _run(open_reg, stage["id"], {"url": local_http_server})
    assert status == 200 and doc["result"]["output"] == "  served locally \n", doc


# ---------------------------------------------------------------- a hostile registry, seen by a client


class FakeRegistry:
    """Answers GET /stages/{ref} from ``stages`` (ref → stage JSON), 404 otherwise;
    GET /stages with ``page`` for every offset."""

    def __init__(self) -> None:
        self.stages: dict[str, Any] = {}
        self.page: Any = None
        self.requests = 0
        fake = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                fake.requests += 1
                path = self.path.split("?")[0]
                ref = path.rsplit("/", 1)[-1]
                if path == "/stages":
                    status, doc = (200, {"ok": True, "result": fake.page}) if fake.requests < 300 else (500, {})
                elif ref in fake.stages:
                    status, doc = 200, {"ok": True, "result": fake.stages[ref]}
                else:
                    status, doc = 404, {"ok": False, "error": {"code": "NOT_FOUND", "message": "no"}}
                self.send_json(status, doc)

        self.server = serve(Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_registry() -> Iterator[FakeRegistry]:
    f = FakeRegistry()
    try:
        yield f
    finally:
        f.close()
        set_remote_source(None)


def _deprecated(stage: dict[str, Any], successor: str) -> dict[str, Any]:
    return {**stage, "lifecycle": {"Deprecated": {"successor_id": successor}}}


def test_a_registry_cannot_redirect_a_pinned_stage_to_another_authors_code(fake_registry: FakeRegistry,
                                                                          tmp_path: Path) -> None:
    """A stage's lifecycle is the registry's word, not part of its id: a registry
    that said the stage a graph pins by id is Deprecated, its successor another
    author's code (same name, types and effects), had that code run instead."""
    pinned = signed_stage_json(spec("pinned_add", "Add one", "def execute(x):\n    return x + 1\n"), tmp_path / "alice")
    other = signed_stage_json(spec("pinned_add", "Add one (not really)", "def execute(x):\n    return -666\n"),
                              tmp_path / "mallory")
    assert pinned["signer_public_key"] != other["signer_public_key"]
    fake_registry.stages = {pinned["id"]: _deprecated(pinned, other["id"]), other["id"]: {**other,
                                                                                          "lifecycle": "Active"}}
    set_remote_source(RegistrySource(RegistryClient(fake_registry.url),
                                     RegistryCache(fake_registry.url, tmp_path / "cache.db")))
    warnings: list[Any] = []
    got = resolve_ref(StageStore(tmp_path / "local.db"), pinned["id"], "signature", "root", warnings)
    assert got.id == pinned["id"]
    assert any(w.code == "remote_successor_ignored" and other["id"][:8] in w.message for w in warnings), warnings


def test_a_registry_successor_must_not_widen_the_effects(fake_registry: FakeRegistry, tmp_path: Path) -> None:
    """Unsigned stages have no signer to compare: a successor is still followed
    only when it is a drop-in (same name, types and effects), so a Pure pin
    cannot become a Network stage on the registry's say-so."""
    pinned = spec("unsigned_pin", "Add one", "def execute(x):\n    return x + 1\n")
    wider = spec("unsigned_pin", "Add one, and phone home", "def execute(x):\n    return x + 1\n",
                 effects=["Network"])
    from noether_nix.model.stage import stage_from_spec, stage_to_json

    pinned_json, wider_json = stage_to_json(stage_from_spec(pinned)), stage_to_json(stage_from_spec(wider))
    fake_registry.stages = {pinned_json["id"]: _deprecated(pinned_json, wider_json["id"]),
                            wider_json["id"]: {**wider_json, "lifecycle": "Active"}}
    set_remote_source(RegistrySource(RegistryClient(fake_registry.url),
                                     RegistryCache(fake_registry.url, tmp_path / "cache.db")))
    warnings: list[Any] = []
    assert resolve_ref(StageStore(tmp_path / "local.db"), pinned_json["id"], "signature", "root",
                       warnings).id == pinned_json["id"]
    assert any(w.code == "remote_successor_ignored" for w in warnings)


def test_a_same_author_successor_from_the_registry_is_followed(fake_registry: FakeRegistry, tmp_path: Path) -> None:
    v1 = signed_stage_json(spec("versioned", "Add one", "def execute(x):\n    return x + 1\n"), tmp_path / "alice")
    v2 = signed_stage_json(spec("versioned", "Add one, faster", "def execute(x):\n    return 1 + x\n"),
                           tmp_path / "alice")
    fake_registry.stages = {v1["id"]: _deprecated(v1, v2["id"]), v2["id"]: {**v2, "lifecycle": "Active"}}
    set_remote_source(RegistrySource(RegistryClient(fake_registry.url),
                                     RegistryCache(fake_registry.url, tmp_path / "cache.db")))
    warnings: list[Any] = []
    assert resolve_ref(StageStore(tmp_path / "local.db"), v1["id"], "signature", "root", warnings).id == v2["id"]
    assert any(w.code == "deprecated_followed" for w in warnings)


def test_a_cached_pin_is_not_redirected_by_another_authors_newcomer(fake_registry: FakeRegistry,
                                                                     tmp_path: Path) -> None:
    """Caching an Active stage deprecates the cached Active stages of its name and
    types (as the registry does), with the newcomer as their successor: a graph
    pinning one of those by id (served from the cache, never asked again) then
    ran whatever another author had published under that name."""
    pinned = signed_stage_json(spec("cached_pin", "Add one", "def execute(x):\n    return x + 1\n"),
                               tmp_path / "alice")
    newcomer = signed_stage_json(spec("cached_pin", "Add one (not really)", "def execute(x):\n    return -666\n"),
                                 tmp_path / "mallory")
    fake_registry.stages = {pinned["id"]: {**pinned, "lifecycle": "Active"},
                            "cached_pin": {**newcomer, "lifecycle": "Active"}}
    cache = RegistryCache(fake_registry.url, tmp_path / "cache.db")
    set_remote_source(RegistrySource(RegistryClient(fake_registry.url), cache))
    local = StageStore(tmp_path / "local.db")
    assert resolve_ref(local, pinned["id"], "signature", "root", []).id == pinned["id"]
    assert resolve_ref(local, "cached_pin", "signature", "root", []).id == newcomer["id"]
    assert cache.store.get(pinned["id"]).successor_id == newcomer["id"]  # type: ignore[union-attr]
    warnings: list[Any] = []
    assert resolve_ref(local, pinned["id"], "signature", "root", warnings).id == pinned["id"]
    assert any(w.code == "remote_successor_ignored" for w in warnings)


def test_a_registry_paging_forever_is_not_followed_forever(fake_registry: FakeRegistry, tmp_path: Path) -> None:
    """list_stages paged until offset reached the registry's ``total``: one that
    said 10**12 and sent the same page again kept the client asking (and
    holding every copy)."""
    stage = signed_stage_json(spec("page_one", "On every page"), tmp_path)
    fake_registry.page = {"stages": [{**stage, "lifecycle": "Active"}] * 200, "total": 10**12}
    got = RegistryClient(fake_registry.url).list_stages()
    assert [s.id for s in got] == [stage["id"]]
    assert fake_registry.requests <= 3


def test_a_registry_answer_nested_too_deeply_is_an_error(tmp_path: Path) -> None:
    deep = b'{"ok": true, "result": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    server = _serve_raw(lambda send: send(_http(deep)))
    try:
        with pytest.raises(NoetherError) as e:
            RegistryClient(server.url).get_stage("x")
        assert e.value.code == "registry_error"
    finally:
        server.close()


def _http(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: " + str(len(body)).encode() + \
        b"\r\n\r\n" + body


class _RawServer:
    def __init__(self, respond: Any) -> None:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stop = threading.Event()
        self.respond = respond
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import contextlib

        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.recv(65536)
                self.respond(conn.sendall)

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def _serve_raw(respond: Any) -> _RawServer:
    return _RawServer(respond)


def test_a_registry_that_trickles_its_answer_is_cut_off_in_time(tmp_path: Path) -> None:
    """The timeout bounded each socket read, not the request: a registry sending
    a byte every half second held the client (and a daemon resolving a graph)
    for as long as it liked."""
    body = json.dumps({"ok": True, "result": None}).encode() + b" " * 40

    def trickle(send: Any) -> None:
        data = _http(body)
        send(data[:60])
        for i in range(60, len(data)):
            time.sleep(0.25)
            send(data[i:i + 1])

    server = _serve_raw(trickle)
    try:
        started = time.monotonic()
        with pytest.raises(NoetherError) as e:
            RegistryClient(server.url, timeout=1.5).get_stage("x")
        elapsed = time.monotonic() - started
        assert e.value.code == "registry_unreachable" and "timed out" in e.value.message
        assert elapsed < 5
    finally:
        server.close()


# ---------------------------------------------------------------- the embedding provider


@pytest.fixture
def fake_embeddings() -> Iterator[FakeEmbeddings]:
    f = FakeEmbeddings()
    try:
        yield f
    finally:
        f.close()


def test_search_queries_do_not_grow_the_embedding_cache(fake_embeddings: FakeEmbeddings, tmp_path: Path) -> None:
    """Every distinct query anyone sent to the (unauthenticated) search was
    embedded and written to the cache file for good, the whole file rewritten
    each time: disk and I/O without bound."""
    cache = tmp_path / "embeddings.json"
    config = config_from_env({"NOETHER_EMBEDDING_PROVIDER": fake_embeddings.url,
                              "NOETHER_EMBEDDING_CACHE": str(cache)})
    assert config is not None
    backend = SqliteBackend(tmp_path / "reg.db", embeddings=EmbeddingProvider(config))
    from noether_nix.model.stage import stage_from_spec

    backend.add(stage_from_spec(spec("car_stage", "Drive a car")))
    backend.search("car")
    before = len(json.loads(cache.read_text()))
    for i in range(30):
        assert backend.search(f"automobile number {i}")["mode"] == "hybrid"
    assert len(json.loads(cache.read_text())) == before


def test_the_embedding_key_does_not_follow_redirects(tmp_path: Path) -> None:
    """urllib follows a 30x with the request's headers: the provider's API key
    went to whatever host the endpoint (or anyone on a plain-http path)
    redirected to."""
    seen: list[str | None] = []

    class Elsewhere(QuietHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("authorization"))
            self.send_response(404)
            self.end_headers()

        do_POST = do_GET

    with served(Elsewhere) as elsewhere:

        class Redirect(QuietHandler):
            def do_POST(self) -> None:
                self.send_response(302)
                self.send_header("location", f"{elsewhere}/steal")
                self.send_header("content-length", "0")
                self.end_headers()

        with served(Redirect) as redirect:
            config = config_from_env({"NOETHER_EMBEDDING_PROVIDER": f"{redirect}/v1",
                                      "NOETHER_EMBEDDING_API_KEY": "sk-secret",
                                      "NOETHER_EMBEDDING_CACHE": str(tmp_path / "c.json")})
            assert config is not None
            with pytest.raises(NoetherError) as e:
                EmbeddingProvider(config).embed(["hello"])
            assert e.value.code == "embedding_failed" and "30" in e.value.message
            assert seen == []


class _SlowEmbeddings:
    """An OpenAI-compatible endpoint that takes ``delay`` seconds per request."""

    def __init__(self, delay: float) -> None:
        slow = self
        self.delay = delay
        self.requests = 0

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                slow.requests += 1
                time.sleep(slow.delay)
                data = [{"index": i, "embedding": [1.0, float(len(t) % 7), 0.5]} for i, t in enumerate(body["input"])]
                self.send_json(200, {"data": data})

        self.server = serve(Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
def test_a_slow_embedding_provider_stalls_no_other_request(start_registry: Any, tmp_path: Path) -> None:
    """The registry's one database slot was held across embeddings requests
    (the stdlib embedded at start, missing vectors and each query on search):
    with a slow provider every other request, reads included, waited."""
    slow = _SlowEmbeddings(4.0)
    try:
        reg = start_registry({"NOETHER_EMBEDDING_PROVIDER": slow.url,
                              "NOETHER_EMBEDDING_CACHE": str(tmp_path / "vectors.json")})
        searches = [threading.Thread(target=curl, args=(f"{reg.url}/stages/search?q=anything+{i}",), daemon=True)
                    for i in range(2)]
        for t in searches:
            t.start()
        worst = 0.0
        for _ in range(6):
            started = time.monotonic()
            status, _ = curl(f"{reg.url}/stages?limit=1")
            worst = max(worst, time.monotonic() - started)
            assert status == 200
            time.sleep(0.5)
        assert worst < 2.5, f"a read waited {worst:.1f} s behind the embedding provider"
        assert slow.requests >= 1
    finally:
        slow.close()
