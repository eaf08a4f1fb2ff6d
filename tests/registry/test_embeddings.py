"""The optional embedding provider, against a small OpenAI-compatible server this test runs.

The test double embeds words by hashing, with one synonym pair, so a search
can only find the "car" stage from "automobile" through the provider.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from noether_nix.errors import NoetherError
from noether_nix.registry.embeddings import EmbeddingProvider, config_from_env
from tests.fake_http import QuietHandler, serve
from tests.registry.conftest import API_KEY, curl, signed_stage_json, spec

DIM = 1024
SYNONYMS = {"automobile": "car", "automobiles": "cars"}


def embed(text: str) -> list[float]:
    v = [0.0] * DIM
    for word in text.lower().replace(",", " ").split():
        word = SYNONYMS.get(word, word)
        v[int(hashlib.sha256(word.encode()).hexdigest(), 16) % DIM] += 1.0
    return v


class FakeEmbeddings:
    def __init__(self) -> None:
        self.batches: list[int] = []
        self.fail_next = False
        self.auth: list[str | None] = []
        fake = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                fake.auth.append(self.headers.get("authorization"))
                if self.path != "/v1/embeddings" or fake.fail_next:
                    fake.fail_next = False
                    self.send_response(500)
                    self.end_headers()
                    return
                fake.batches.append(len(body["input"]))
                data = [{"object": "embedding", "index": i, "embedding": embed(t)}
                        for i, t in reversed(list(enumerate(body["input"])))]
                self.send_json(200, {"object": "list", "data": data, "model": body["model"]})

        self.server = serve(Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Iterator[FakeEmbeddings]:
    f = FakeEmbeddings()
    yield f
    f.close()


def test_configuration() -> None:
    assert config_from_env({}) is None and config_from_env({"NOETHER_EMBEDDING_PROVIDER": "none"}) is None
    with pytest.raises(NoetherError) as e:
        config_from_env({"NOETHER_EMBEDDING_PROVIDER": "mock"})
    assert e.value.code == "invalid_config" and "no mock" in (e.value.hint or "")
    cfg = config_from_env({"NOETHER_EMBEDDING_PROVIDER": "openai", "OPENAI_API_BASE": "http://h/v1/",
                           "OPENAI_API_KEY": "sk", "NOETHER_EMBEDDING_BATCH_SIZE": "8",
                           "NOETHER_EMBEDDING_BATCH_DELAY_MS": "1100"})
    assert cfg is not None
    assert (cfg.base_url, cfg.api_key, cfg.model, cfg.batch_size, cfg.batch_delay_ms) == (
        "http://h/v1", "sk", "text-embedding-3-small", 8, 1100)
    with pytest.raises(NoetherError):
        config_from_env({"NOETHER_EMBEDDING_PROVIDER": "openai", "NOETHER_EMBEDDING_BATCH_SIZE": "0"})


def test_batches_delay_and_file_cache(fake: FakeEmbeddings, tmp_path: Path) -> None:
    cfg = config_from_env({"NOETHER_EMBEDDING_PROVIDER": fake.url, "NOETHER_EMBEDDING_API_KEY": "secret",
                           "NOETHER_EMBEDDING_CACHE": str(tmp_path / "cache.json"),
                           "NOETHER_EMBEDDING_BATCH_SIZE": "2", "NOETHER_EMBEDDING_BATCH_DELAY_MS": "200"})
    assert cfg is not None
    provider = EmbeddingProvider(cfg)
    texts = ["parse csv", "car count", "text upper", "hash text", "car count"]
    started = time.monotonic()
    vectors = provider.embed(texts)
    assert time.monotonic() - started >= 0.18  # a pause between the two batches
    assert fake.batches == [2, 2]  # four distinct texts, two a batch: the repeated one is asked once
    assert fake.auth[0] == "Bearer secret"
    assert len(vectors) == 5 and vectors[1] == vectors[4]
    assert abs(sum(x * x for x in vectors[0]) - 1) < 1e-9  # normalised
    # The cache file answers from now on, in this process and the next.
    calls = provider.calls
    provider.embed(texts)
    assert provider.calls == calls
    again = EmbeddingProvider(cfg)
    assert again.embed(["car count"]) == [vectors[1]] and again.calls == 0
    fake.fail_next = True
    with pytest.raises(NoetherError) as e:
        again.embed(["something new"])
    assert e.value.code == "embedding_failed" and "500" in e.value.message


def test_registry_search_uses_the_provider(fake: FakeEmbeddings, start_registry: Any, tmp_path: Path) -> None:
    cars = signed_stage_json(spec("count_cars", "Count the cars in a parking lot",
                                  input={"List": "Text"}, output="Number",
                                  code="def execute(x):\n    return len(x)\n",
                                  examples=[{"input": ["a", "b"], "output": 2}]), tmp_path)
    lexical = start_registry({})
    hybrid = start_registry({"NOETHER_EMBEDDING_PROVIDER": fake.url,
                             "NOETHER_EMBEDDING_CACHE": str(tmp_path / "emb.json"),
                             "NOETHER_EMBEDDING_BATCH_SIZE": "64"})
    for reg in (lexical, hybrid):
        assert curl("-X", "POST", f"{reg.url}/stages", "-H", f"X-API-Key: {API_KEY}", data=cars)[0] == 201
    assert curl(f"{lexical.url}/health")[1]["result"]["search"] == "lexical"
    assert curl(f"{hybrid.url}/health")[1]["result"]["search"] == "hybrid"
    # Without a provider there is no semantic match, and no pretend one.
    found = curl(f"{lexical.url}/stages/search?q=automobiles")[1]["result"]
    assert found["mode"] == "lexical" and found["results"] == []
    found = curl(f"{hybrid.url}/stages/search?q=automobiles")[1]["result"]
    assert found["mode"] == "hybrid" and found["results"][0]["id"] == cars["id"]
    assert "text:embedding" in found["results"][0]["ranks"]
    assert fake.batches and max(fake.batches) <= 64
