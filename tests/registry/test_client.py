"""The client's checks on what a registry sends, and how resolution layers local over remote."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from noether_nix.errors import NoetherError
from noether_nix.graph.resolve import resolve_ref
from noether_nix.registry import search
from noether_nix.registry.client import RegistryCache, RegistryClient, RegistrySource, check_url
from noether_nix.store.remote import set_remote_source
from noether_nix.store.stages import StageStore
from tests.fake_http import QuietHandler, serve
from tests.registry.conftest import signed_stage_json, spec


class Hostile:
    """A registry that answers every GET /stages/{ref} with the stage it is given."""

    def __init__(self) -> None:
        self.answer: Any = None
        self.status = 200
        hostile = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                self.send_json(hostile.status, hostile.answer)

        self.server = serve(Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    h = Hostile()
    yield h
    h.server.shutdown()
    h.server.server_close()


@pytest.fixture
def no_source() -> Iterator[None]:
    yield
    set_remote_source(None)


def test_a_tampered_stage_is_refused_and_not_cached(hostile: Hostile, tmp_path: Path, no_source: None) -> None:
    good = signed_stage_json(spec("honest", "An honest stage"), tmp_path)
    source = RegistrySource(RegistryClient(hostile.url), RegistryCache(hostile.url, tmp_path / "cache.db"))
    set_remote_source(source)
    local = StageStore(tmp_path / "local.db")

    hostile.answer = {"ok": True, "result": {**good, "implementation_code": "import os\ndef execute(x):\n    return 0\n"}}
    with pytest.raises(NoetherError) as e:
        resolve_ref(local, "honest", "signature", "root", [])
    assert e.value.code == "registry_bad_stage" and hostile.url in str(e.value)
    hostile.answer = {"ok": True, "result": {**good, "ed25519_signature": "11" * 64}}
    with pytest.raises(NoetherError) as e:
        resolve_ref(local, "honest", "signature", "root", [])
    assert e.value.code == "registry_bad_stage" and "signature" in e.value.message
    assert source.cache.store.get(good["id"]) is None

    hostile.answer = {"ok": True, "result": good}
    warnings: list[Any] = []
    assert resolve_ref(local, "honest", "signature", "root", warnings).id == good["id"]
    assert any(w.code == "remote_stage" for w in warnings)
    assert source.cache.origin_of(good["id"])["origin"] == hostile.url  # type: ignore[index]

    hostile.status, hostile.answer = 500, "<html>oops</html>"
    with pytest.raises(NoetherError) as e:
        RegistryClient(hostile.url).get_stage("x")
    assert e.value.code == "registry_error" and "500" in e.value.message


def test_local_stages_shadow_remote_ones(hostile: Hostile, tmp_path: Path, no_source: None) -> None:
    remote = signed_stage_json(spec("shared_name", "The registry's", "def execute(x):\n    return 1\n"), tmp_path)
    mine = signed_stage_json(spec("shared_name", "Mine", "def execute(x):\n    return 2\n"), tmp_path)
    hostile.answer = {"ok": True, "result": remote}
    set_remote_source(RegistrySource(RegistryClient(hostile.url), RegistryCache(hostile.url, tmp_path / "c.db")))
    local = StageStore(tmp_path / "local.db")
    from noether_nix.model.stage import stage_from_json

    local.add(stage_from_json({**mine, "lifecycle": "Active"}))
    assert resolve_ref(local, "shared_name", "signature", "root", []).id == mine["id"]
    assert resolve_ref(local, remote["id"], "signature", "root", []).id == remote["id"]


def test_urls_are_checked() -> None:
    assert check_url("http://127.0.0.1:3000/") == "http://127.0.0.1:3000"
    assert check_url("https://registry.example/noether") == "https://registry.example/noether"
    for bad in ("127.0.0.1:3000", "ftp://x", "http://", "http://h:99999", "http://h/?q=1"):
        with pytest.raises(NoetherError) as e:
            check_url(bad)
        assert e.value.code == "usage"


def test_search_pieces() -> None:
    q = search.parse_query("Record{celsius: Number} → List<Text>")
    assert q.signature_only and q.sig_in == ["record", "number"] and q.sig_out == ["list", "text"]
    q = search.parse_query('parse "CSV" OR 1=1; DROP TABLE')
    assert q.words == ["parse", "csv", "or", "1", "drop", "table"] and not q.signature_only
    assert search.fts5_match("text", ["a", "b"]) == '{text} : ("a"* OR "b"*)'
    assert search.tsquery(["a", "b"]) == "a:* | b:*"
    fused = search.fuse([("text", ["a", "b"]), ("signature", ["b", "c"])])
    assert [sid for sid, _, _ in fused] == ["b", "a", "c"]
    assert fused[0][2] == {"text": 2, "signature": 1}
    exact = search.rerank_signature(search.parse_query("Text -> Number"),
                                    [("x", "record text", "number"), ("y", "text", "number"), ("z", "text", "list")])
    assert exact[0] == "y"


def test_the_client_against_a_real_registry(registry: Any, tmp_path: Path) -> None:
    from tests.registry.conftest import API_KEY

    reader = RegistryClient(registry.url)
    writer = RegistryClient(registry.url + "/", api_key=API_KEY)
    assert reader.health()["store"]["total_stages"] > 50
    everything = reader.list_stages("active")  # pages of 200 until the total
    assert len(everything) == reader.health()["store"]["by_lifecycle"]["Active"]
    stage = signed_stage_json(spec("client_made", "Published by the client"), tmp_path)
    with pytest.raises(NoetherError) as e:
        reader.publish(stage)
    assert e.value.code == "registry_unauthorized"
    assert writer.publish(stage)["is_new"] is True
    got = reader.get_stage("client_made")
    assert got is not None and got.id == stage["id"] and got.state == "Active"
    assert reader.get_stage("no_such_stage") is None
    assert reader.search("client")["results"][0]["id"] == stage["id"]
    assert writer.change_lifecycle(stage["id"], "tombstone")["lifecycle"] == "tombstone"
    assert [s.id for s in reader.list_stages("tombstone")] == [stage["id"]]
    assert writer.delete(stage["id"])["deleted"] is True
    with pytest.raises(NoetherError) as e:
        writer.delete(stage["id"])
    assert e.value.code == "registry_not_found"


def test_a_registry_stage_answers_what_local_stages_no_longer_do(hostile: Hostile, tmp_path: Path,
                                                               no_source: None) -> None:
    from noether_nix.model.stage import stage_from_json

    mine = signed_stage_json(spec("retired", "Mine, tombstoned", "def execute(x):\n    return 2\n"), tmp_path)
    theirs = signed_stage_json(spec("retired", "The registry's", "def execute(x):\n    return 3\n"), tmp_path)
    local = StageStore(tmp_path / "local.db")
    local.add(stage_from_json({**mine, "lifecycle": "Active"}))
    local.transition(mine["id"], "Tombstone")
    with pytest.raises(NoetherError) as e:
        resolve_ref(local, "retired", "signature", "root", [])
    assert e.value.code == "stage_not_found"
    hostile.answer = {"ok": True, "result": {**theirs, "lifecycle": "Active"}}
    set_remote_source(RegistrySource(RegistryClient(hostile.url), RegistryCache(hostile.url, tmp_path / "c.db")))
    assert resolve_ref(local, "retired", "signature", "root", []).id == theirs["id"]
    # The same id locally tombstoned stays tombstoned: the local copy shadows the registry's.
    hostile.answer = {"ok": True, "result": {**mine, "lifecycle": "Active"}}
    with pytest.raises(NoetherError) as e:
        resolve_ref(local, mine["id"], "signature", "root", [])
    assert e.value.code == "stage_tombstoned"


def test_an_unreachable_registry_is_not_asked_per_reference(tmp_path: Path, no_source: None) -> None:
    import socket
    import time

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    client = RegistryClient(url)
    calls = []
    real = client.get_stage

    def counting(ref: str) -> Any:
        calls.append(ref)
        return real(ref)

    client.get_stage = counting  # type: ignore[method-assign]
    source = RegistrySource(client, RegistryCache(url, tmp_path / "c.db"), retry_after_s=60)
    set_remote_source(source)
    local = StageStore(tmp_path / "local.db")
    for ref in ("one", "two", "three"):
        with pytest.raises(NoetherError) as e:
            resolve_ref(local, ref, "signature", "root", [])
        assert e.value.code == "registry_unreachable" and url in e.value.message
    assert calls == ["one"]
    assert source._down is not None
    source._down = (time.monotonic() - 1, source._down[1])  # the minute has passed
    with pytest.raises(NoetherError):
        resolve_ref(local, "four", "signature", "root", [])
    assert calls == ["one", "four"]
