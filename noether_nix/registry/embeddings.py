"""Optional embedding provider for registry search: any OpenAI-compatible endpoint.

``NOETHER_EMBEDDING_PROVIDER`` names it: ``openai`` (``OPENAI_API_BASE``,
``OPENAI_API_KEY``, ``OPENAI_EMBEDDING_MODEL``, upstream's variables),
``mistral`` (``MISTRAL_API_KEY``, ``MISTRAL_EMBEDDING_MODEL``), or the base
URL of any server that answers ``POST {base}/embeddings`` the OpenAI way.
Unset, empty or ``none`` means lexical search only. There is no mock
provider: a name this module does not know is a configuration error, never
a silent stand-in.

Vectors are cached in a JSON file keyed by (model, text) hash, so restarts
and re-indexing do not pay for them twice; texts go out in batches of
``NOETHER_EMBEDDING_BATCH_SIZE`` with ``NOETHER_EMBEDDING_BATCH_DELAY_MS``
between batches (for rate-limited providers), the cache being written after
each batch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from noether_nix.errors import NoetherError
from noether_nix.paths import noether_home

Vector = list[float]
#: Query vectors kept in memory (never in the cache file: queries come from anyone).
QUERY_CACHE_ENTRIES = 1024
#: After a failed request the endpoint is not asked again for this long (searches stay lexical).
RETRY_AFTER_S = 30.0


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A 30x is an answer, not a new address: urllib would send the API key
    (the Authorization header) along to wherever the endpoint points."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)
_PRESETS = {
    "openai": ("OPENAI_API_BASE", "https://api.openai.com/v1", "OPENAI_API_KEY", "OPENAI_EMBEDDING_MODEL",
               "text-embedding-3-small"),
    "mistral": ("MISTRAL_API_BASE", "https://api.mistral.ai/v1", "MISTRAL_API_KEY", "MISTRAL_EMBEDDING_MODEL",
                "mistral-embed"),
}


class EmbeddingConfig(msgspec.Struct, kw_only=True, frozen=True):
    provider: str
    base_url: str
    model: str
    api_key: str | None = None
    cache_path: str = ""
    batch_size: int = 32
    batch_delay_ms: int = 0
    timeout_s: float = 30.0


def _int_env(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise NoetherError("invalid_config", f"{name} must be an integer", path=name) from None
    if not lo <= value <= hi:
        raise NoetherError("invalid_config", f"{name} must be between {lo} and {hi}", path=name)
    return value


def config_from_env(env: Mapping[str, str] | None = None) -> EmbeddingConfig | None:
    env = os.environ if env is None else env
    name = env.get("NOETHER_EMBEDDING_PROVIDER", "").strip()
    if name.lower() in ("", "none", "off"):
        return None
    if name.lower() in _PRESETS:
        base_var, base_default, key_var, model_var, model_default = _PRESETS[name.lower()]
        base = env.get(base_var) or base_default
        key = env.get("NOETHER_EMBEDDING_API_KEY") or env.get(key_var)
        model = env.get("NOETHER_EMBEDDING_MODEL") or env.get(model_var) or model_default
    elif name.startswith(("http://", "https://")):
        base, key = name, env.get("NOETHER_EMBEDDING_API_KEY")
        model = env.get("NOETHER_EMBEDDING_MODEL") or "text-embedding-3-small"
    else:
        raise NoetherError("invalid_config", f"unknown embedding provider {name!r} (use openai, mistral, "
                           "the base URL of an OpenAI-compatible endpoint, or none)",
                           path="NOETHER_EMBEDDING_PROVIDER",
                           hint="there is no mock provider: without one, search is lexical")
    cache = env.get("NOETHER_EMBEDDING_CACHE") or str(noether_home() / "embeddings-cache.json")
    return EmbeddingConfig(
        provider=name, base_url=base.rstrip("/"), model=model, api_key=key or None, cache_path=cache,
        batch_size=_int_env(env, "NOETHER_EMBEDDING_BATCH_SIZE", 32, 1, 2048),
        batch_delay_ms=_int_env(env, "NOETHER_EMBEDDING_BATCH_DELAY_MS", 0, 0, 600_000),
        timeout_s=float(_int_env(env, "NOETHER_EMBEDDING_TIMEOUT_S", 30, 1, 600)),
    )


class _Response(msgspec.Struct):
    data: list[_Item]


class _Item(msgspec.Struct):
    embedding: list[float]
    index: int = -1


def normalise(v: Sequence[float]) -> Vector:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v] if n > 0 else list(v)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Of two normalised vectors."""
    return sum(x * y for x, y in zip(a, b, strict=False))


class EmbeddingProvider:
    """Embeds texts through the cache, calling the endpoint for what it lacks."""

    def __init__(self, config: EmbeddingConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._cache: dict[str, Vector] = self._load()
        self._queries: OrderedDict[str, Vector] = OrderedDict()
        self._down: tuple[float, NoetherError] | None = None
        self.calls = 0  # requests made to the endpoint (for /metrics and tests)

    @property
    def model(self) -> str:
        return self.config.model

    def _key(self, text: str) -> str:
        return hashlib.sha256(f"{self.config.model}\0{text}".encode()).hexdigest()

    def _load(self) -> dict[str, Vector]:
        try:
            raw = Path(self.config.cache_path).read_bytes()
        except OSError:
            return {}
        try:
            doc = msgspec.json.decode(raw, type=dict[str, list[float]])
        except (msgspec.DecodeError, msgspec.ValidationError):
            return {}  # a damaged cache is rebuilt, not trusted
        return doc

    def _save(self) -> None:
        path = Path(self.config.cache_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(msgspec.json.encode(self._cache))
        os.replace(tmp, path)

    def embed(self, texts: Sequence[str]) -> list[Vector]:
        """Normalised vectors for ``texts``, in order; raises ``embedding_failed``."""
        keys = [self._key(t) for t in texts]
        # The lock guards the cache, never a request: a query waits for no batch.
        with self._lock:
            missing: dict[str, str] = {}
            for k, t in zip(keys, texts, strict=True):
                if k not in self._cache:
                    missing.setdefault(k, t)
        todo = list(missing.items())
        for start in range(0, len(todo), self.config.batch_size):
            if start and self.config.batch_delay_ms:
                time.sleep(self.config.batch_delay_ms / 1000)
            chunk = todo[start:start + self.config.batch_size]
            vectors = self._request([t for _, t in chunk])
            with self._lock:
                for (k, _), v in zip(chunk, vectors, strict=True):
                    self._cache[k] = normalise(v)
                self._save()  # progressive: a later batch's failure keeps this one's work
        with self._lock:
            return [self._cache[k] for k in keys]

    def embed_query(self, text: str) -> Vector:
        """The vector of a search query: from the file cache if a stage's text is
        the same, else from a small in-memory cache, else the endpoint. Never
        written to the file: anyone may search, and each distinct query would
        otherwise stay on disk for good (the whole file rewritten each time)."""
        key = self._key(text)
        with self._lock:
            found = self._cache.get(key) or self._queries.get(key)
            if found is not None:
                self._queries.pop(key, None)
                self._queries[key] = found
                return found
        vector = normalise(self._request([text])[0])
        with self._lock:
            self._queries[key] = vector
            while len(self._queries) > QUERY_CACHE_ENTRIES:
                self._queries.popitem(last=False)
        return vector

    def _request(self, texts: list[str]) -> list[Vector]:
        down = self._down
        if down is not None and time.monotonic() < down[0]:
            raise NoetherError("embedding_failed", f"{down[1].message} (not asked again for {RETRY_AFTER_S:g} s)",
                               path=down[1].path)
        try:
            vectors = self._call(texts)
        except NoetherError as e:
            self._down = (time.monotonic() + RETRY_AFTER_S, e)
            raise
        self._down = None
        return vectors

    def _call(self, texts: list[str]) -> list[Vector]:
        body = json.dumps({"model": self.config.model, "input": texts}).encode()
        headers = {"content-type": "application/json"}
        if self.config.api_key:
            headers["authorization"] = f"Bearer {self.config.api_key}"
        url = f"{self.config.base_url}/embeddings"
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        self.calls += 1
        try:
            with _OPENER.open(req, timeout=self.config.timeout_s) as resp:
                raw = resp.read(64 * 1024 * 1024)
        except urllib.error.HTTPError as e:
            raise NoetherError("embedding_failed", f"the embedding endpoint answered {e.code} {e.reason}",
                               path=url) from None
        except (OSError, urllib.error.URLError) as e:
            raise NoetherError("embedding_failed", f"the embedding endpoint is unreachable: {e}", path=url) from None
        try:
            doc = msgspec.json.decode(raw, type=_Response)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise NoetherError("embedding_failed", f"the embedding endpoint's answer is malformed: {e}",
                               path=url) from None
        items = doc.data
        if len(items) != len(texts):
            raise NoetherError("embedding_failed", f"asked for {len(texts)} embeddings, got {len(items)}", path=url)
        if all(i.index >= 0 for i in items):
            items = sorted(items, key=lambda i: i.index)
        dims = {len(i.embedding) for i in items}
        if len(dims) != 1 or 0 in dims:
            raise NoetherError("embedding_failed", "the endpoint returned vectors of differing or zero size",
                               path=url)
        return [i.embedding for i in items]
