"""The registry client: HTTP calls, and the verified local cache runs resolve from.

``RegistryClient`` speaks the registry wire format (upstream's): envelopes
``{"ok": true, "result": …}`` / ``{"ok": false, "error": {"code", "message"}}``,
``X-API-Key`` on every request when a key is set. Its errors name the
registry's URL: ``registry_unreachable``, ``registry_unauthorized``,
``registry_rejected`` (the server's reasons attached), ``registry_error``.

``RegistrySource`` is the ``RemoteSource`` resolution falls back to: a stage
fetched from the registry is checked (its id recomputed from its content,
its Ed25519 signature verified when it has one) and cached in a SQLite file
of its own under ``$NOETHER_HOME/registries/``, with its origin and fetch
time, so a run that used it runs again with the registry gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from noether_nix import __version__
from noether_nix.errors import NoetherError
from noether_nix.model.signing import SignatureStatus, verify_id
from noether_nix.model.stage import Stage, check_identity, stage_from_json
from noether_nix.paths import noether_home
from noether_nix.registry.layered import Layered
from noether_nix.settings import settings
from noether_nix.store.db import write_txn
from noether_nix.store.remote import StageLookup
from noether_nix.store.stages import StageStore

PAGE = 200
#: The most stages a listing takes from one registry (then registry_error).
MAX_LISTED = 100_000
MAX_RESPONSE_BYTES = 256 * 1024 * 1024
DEFAULT_TIMEOUT_S = 30.0
_FULL_ID = re.compile(r"^[0-9a-f]{64}$")


def check_url(url: str) -> str:
    """A registry base URL, without its trailing slash; a usage error when it is not one."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise NoetherError("usage", f"registry URL {url!r} is not an http(s)://host[:port][/path] URL",
                           path="--registry", exit_code=2)
    try:
        parts.port  # noqa: B018 (validates the port)
    except ValueError:
        raise NoetherError("usage", f"registry URL {url!r} has an invalid port", path="--registry",
                           exit_code=2) from None
    return url.strip().rstrip("/")


def verified_stage(doc: Any, origin: str) -> Stage:
    """A stage the registry sent, checked: content id and (if any) signature."""
    try:
        stage = stage_from_json(doc, path="stage")
        check_identity(stage)
    except NoetherError as e:
        raise NoetherError("registry_bad_stage", f"the registry sent a stage that fails its checks: {e}",
                           path=origin) from None
    status = verify_id(stage.id, stage.ed25519_signature, stage.signer_public_key)
    if status in (SignatureStatus.BAD_SIGNATURE, SignatureStatus.MALFORMED):
        raise NoetherError("registry_bad_stage", f"the registry sent stage {stage.id[:12]} with a signature that "
                           f"is {status.value.replace('_', ' ')}", path=origin)
    return stage


class RegistryClient:
    def __init__(self, url: str, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.url = check_url(url)
        parts = urlsplit(self.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._base = parts.path.rstrip("/")
        self.api_key = api_key or None
        self.timeout = timeout

    # ------------------------------------------------------------ transport

    def _connection(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout)
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)

    def request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None) -> Any:
        """The ``result`` of the registry's envelope; its error raised as a ``NoetherError``."""
        target = self._base + path + (f"?{urlencode(query)}" if query else "")
        headers = {"user-agent": f"noether-nix/{__version__}", "x-noether-client-version": __version__,
                   "accept": "application/json"}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        payload = None
        if body is not None:
            payload = json.dumps(body, ensure_ascii=False).encode()
            headers["content-type"] = "application/json"
        conn = self._connection()
        # The timeout bounds the whole request, not each read: at the deadline the
        # socket is shut down, so a registry sending a byte at a time cannot hold us.
        cut = threading.Event()

        def deadline() -> None:
            cut.set()
            sock = conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        timer = threading.Timer(self.timeout, deadline)
        timer.daemon = True
        timer.start()
        try:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                # A server refusing the body (413) may close before reading it: its answer still counts.
                conn.request(method, target, body=payload, headers=headers)
            resp = conn.getresponse()
            raw = resp.read(MAX_RESPONSE_BYTES + 1)
            status = resp.status
        except (OSError, http.client.HTTPException) as e:
            timed_out = cut.is_set() or isinstance(e, (TimeoutError, socket.timeout))
            why = f"timed out after {self.timeout:g} s" if timed_out else str(e) or type(e).__name__
            raise NoetherError("registry_unreachable", f"the registry at {self.url} is unreachable ({why})",
                               path=self.url, hint="check the URL (--registry / NOETHER_REGISTRY) and that "
                               "the registry is running") from None
        finally:
            timer.cancel()
            conn.close()
        if cut.is_set():
            raise NoetherError("registry_unreachable", f"the registry at {self.url} is unreachable (timed out "
                               f"after {self.timeout:g} s)", path=self.url)
        if len(raw) > MAX_RESPONSE_BYTES:
            raise NoetherError("registry_error", f"the registry at {self.url} sent an answer over "
                               f"{MAX_RESPONSE_BYTES} bytes", path=self.url)
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        except RecursionError:
            raise NoetherError("registry_error", f"the registry at {self.url} sent an answer nested too deeply",
                               path=self.url) from None
        if isinstance(doc, dict) and doc.get("ok") is True and "result" in doc:
            return doc["result"]
        raise self._error(status, doc, method, path)

    def _error(self, status: int, doc: Any, method: str, path: str) -> NoetherError:
        err = doc.get("error") if isinstance(doc, dict) else None
        if not isinstance(err, dict):
            return NoetherError("registry_error", f"the registry at {self.url} answered {method} {path} with "
                                f"HTTP {status} and no envelope", path=self.url)
        code, message = str(err.get("code", "")), str(err.get("message", ""))
        given = err.get("details")
        details: dict[str, Any] = {**(given if isinstance(given, dict) else {}), "registry": self.url, "registry_code": code, "http_status": status}
        if status == 401 or code == "UNAUTHORIZED":
            return NoetherError("registry_unauthorized", f"the registry at {self.url} refused the request: "
                                f"{message}", path=self.url, details=details,
                                hint="set NOETHER_API_KEY to this registry's key")
        if status == 404 or code == "NOT_FOUND":
            return NoetherError("registry_not_found", f"{message} (registry {self.url})", path=self.url,
                                details=details)
        if status >= 500:
            return NoetherError("registry_error", f"the registry at {self.url} failed: {code}: {message}",
                                path=self.url, details=details)
        if "candidates" in details:
            return NoetherError("ambiguous_reference", f"{message} (registry {self.url})", path=self.url,
                                details=details, hint="use a longer prefix or the full id")
        return NoetherError("registry_rejected", f"the registry at {self.url} rejected {method} {path}: "
                            f"{code}: {message}", path=self.url, details=details, exit_code=1)

    # ------------------------------------------------------------ API

    def health(self) -> Any:
        return self.request("GET", "/health")

    def get_stage(self, ref: str) -> Stage | None:
        """The stage ``ref`` names on the registry (id, prefix, signature id or name), or None."""
        try:
            doc = self.request("GET", f"/stages/{quote(ref, safe='')}")
        except NoetherError as e:
            if e.code == "registry_not_found":
                return None
            raise
        return verified_stage(doc, self.url)

    def list_stages(self, lifecycle: str = "active", tag: str | None = None) -> list[Stage]:
        """Every stage of ``lifecycle``, paging like upstream's client (200 a page)."""
        out: dict[str, Stage] = {}
        offset = 0
        while True:
            query: dict[str, Any] = {"lifecycle": lifecycle, "limit": PAGE, "offset": offset}
            if tag is not None:
                query["tag"] = tag
            page = self.request("GET", "/stages", query=query)
            if not isinstance(page, dict) or not isinstance(page.get("stages"), list):
                raise NoetherError("registry_error", f"the registry at {self.url} sent a malformed stage list",
                                   path=self.url)
            known = len(out)
            for doc in page["stages"]:
                stage = verified_stage(doc, self.url)
                out.setdefault(stage.id, stage)
            offset += len(page["stages"])
            total = page.get("total")
            # A page that adds nothing new ends the listing too: a registry that
            # sends the same page again (and a huge total) is not followed forever.
            if not page["stages"] or not isinstance(total, int) or offset >= total or len(out) == known:
                return list(out.values())
            if len(out) > MAX_LISTED:
                raise NoetherError("registry_error", f"the registry at {self.url} lists more than {MAX_LISTED} "
                                   "stages", path=self.url)

    def search(self, query: str, limit: int = 20) -> Any:
        return self.request("GET", "/stages/search", query={"q": query, "limit": limit})

    def publish(self, stage_json: dict[str, Any], *, draft: bool = False) -> Any:
        return self.request("POST", "/stages" + ("?draft=1" if draft else ""), stage_json)

    def change_lifecycle(self, stage_id: str, to: str, successor_id: str | None = None) -> Any:
        body: dict[str, Any] = {"lifecycle": to.lower()}
        if successor_id:
            body["successor_id"] = successor_id
        return self.request("PATCH", f"/stages/{quote(stage_id, safe='')}/lifecycle", body)

    def delete(self, stage_id: str) -> Any:
        return self.request("DELETE", f"/stages/{quote(stage_id, safe='')}")


# ---------------------------------------------------------------- cache


def cache_path(url: str, home: Path | None = None) -> Path:
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return (home or noether_home()) / "registries" / f"{digest}.db"


ORIGINS_SCHEMA = """
CREATE TABLE IF NOT EXISTS stage_origins (
    stage_id   TEXT PRIMARY KEY,
    origin     TEXT NOT NULL,
    signature  TEXT NOT NULL,
    fetched_at REAL NOT NULL
);
"""


class RegistryCache:
    """Stages fetched from one registry, verified, kept in their own SQLite file."""

    def __init__(self, origin: str, path: Path | None = None) -> None:
        self.origin = origin
        self.path = path or cache_path(origin)
        self._store: StageStore | None = None

    @property
    def store(self) -> StageStore:
        if self._store is None:
            self._store = StageStore(self.path)
            self._store.conn.executescript(ORIGINS_SCHEMA)
        return self._store

    def remember(self, stage: Stage) -> Stage:
        """Cache a verified stage (its lifecycle as the registry reports it now)."""
        store = self.store
        if store.get(stage.id) is None:
            # Added Active, it deprecates the cached Active stages of its signature (as
            # the registry did): resolution follows such a successor only when it is a
            # drop-in by the same signer (graph.resolve._drop_in).
            store.add(stage)
        with write_txn(store.conn) as c:
            # Mirror the registry's lifecycle (the registry owns it; the content never changes).
            c.execute("UPDATE stages SET lifecycle = ?, successor_id = ? WHERE id = ?",
                      (stage.state, stage.successor_id, stage.id))
            status = verify_id(stage.id, stage.ed25519_signature, stage.signer_public_key)
            c.execute("INSERT OR REPLACE INTO stage_origins (stage_id, origin, signature, fetched_at) "
                      "VALUES (?, ?, ?, ?)", (stage.id, self.origin, status.value, time.time()))
        return store.get(stage.id) or stage

    def origin_of(self, stage_id: str) -> dict[str, Any] | None:
        row = self.store.conn.execute("SELECT origin, signature, fetched_at FROM stage_origins WHERE stage_id = ?",
                                      (stage_id,)).fetchone()
        return None if row is None else {"origin": row[0], "signature": row[1], "fetched_at": row[2]}

    def answers(self, ref: str) -> bool:
        s = self.store
        return bool(s.get(ref) or s.by_prefix(ref) or s.by_signature(ref) or s.by_legacy(ref) or s.by_name(ref))


class _CacheLayer:
    """The cache as a lookup; a full id it lacks is fetched (successors of deprecated stages)."""

    def __init__(self, source: RegistrySource) -> None:
        self.source = source
        self.cache = source.cache.store

    def get(self, stage_id: str) -> Stage | None:
        found = self.cache.get(stage_id)
        if found is None and _FULL_ID.match(stage_id):
            fetched = self.source._fetch(stage_id)
            if fetched is not None and fetched.id == stage_id:
                found = self.source.cache.remember(fetched)
        return found

    def by_prefix(self, prefix: str) -> list[Stage]:
        return self.cache.by_prefix(prefix)

    def by_signature(self, signature_id: str) -> list[Stage]:
        return self.cache.by_signature(signature_id)

    def by_name(self, name: str) -> list[Stage]:
        return self.cache.by_name(name)

    def by_legacy(self, ref: str) -> list[Stage]:
        return self.cache.by_legacy(ref)


class RegistrySource:
    """Resolution's fallback to a registry (``store.remote.RemoteSource``).

    A registry found unreachable is not asked again for ``retry_after_s``:
    the references after the first go straight to the cache, so a graph (or
    a daemon's runs) does not wait out a timeout per reference."""

    own_lifecycles = False

    def __init__(self, client: RegistryClient, cache: RegistryCache | None = None, *,
                 retry_after_s: float = 30.0) -> None:
        self.client = client
        self.origin = client.url
        self.cache = cache or RegistryCache(client.url)
        self.retry_after_s = retry_after_s
        self._down: tuple[float, NoetherError] | None = None

    def _fetch(self, ref: str) -> Stage | None:
        if self._down is not None and time.monotonic() < self._down[0]:
            raise self._down[1]
        try:
            found = self.client.get_stage(ref)
        except NoetherError as e:
            if e.code == "registry_unreachable":
                self._down = (time.monotonic() + self.retry_after_s, e)
            raise
        self._down = None
        return found

    def lookup(self, local: StageLookup, ref: str) -> tuple[StageLookup, list[tuple[str, str]]]:
        notes: list[tuple[str, str]] = []
        cached = self.cache.store.get(ref) if _FULL_ID.match(ref) else None
        if cached is None:
            # A name, prefix or signature id may mean a newer stage now: ask the registry first.
            try:
                fetched = self._fetch(ref)
            except NoetherError as e:
                if e.code != "registry_unreachable":
                    raise
                if not self.cache.answers(ref):
                    raise NoetherError("registry_unreachable", f"no local stage matches {ref!r}, none cached "
                                       f"from {self.origin} does, and {e.message}", path=self.origin,
                                       hint=e.hint) from None
                notes.append(("registry_offline", f"{self.origin} is unreachable; {ref!r} resolved from the "
                                                  "stages cached from it"))
            else:
                if fetched is not None:
                    cached = self.cache.remember(fetched)
        if cached is not None:
            notes.append(("remote_stage", f"stage {cached.label()} comes from the registry at {self.origin}"))
        return Layered(local, _CacheLayer(self)), notes


def client_from_env(url: str | None = None, *, timeout: float | None = None) -> RegistryClient | None:
    """A client for ``url`` or the settings' registry ($NOETHER_REGISTRY, with its key
    $NOETHER_API_KEY), or None when neither is set."""
    configured = settings().registry
    url = url or configured.url
    if not url:
        return None
    return RegistryClient(url, configured.api_key or None, timeout=timeout or configured.timeout_s)
