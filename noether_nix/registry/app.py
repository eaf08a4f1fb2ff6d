"""The registry's HTTP API: a small ASGI application (served by hypercorn on trio).

Routes and envelopes are upstream's (see docs/registry.md), so upstream's
CLI works against it unchanged. Every request is bounded: the body by
``max_body_bytes`` (413), reading and answering by ``request_timeout_s``
(408 / 503), a run by ``run_timeout_s``; pagination by 1 ≤ limit ≤ 200.
Writes need the API key; reads never do. Storage calls run one at a time
in a worker thread (the backend holds one database connection).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, unquote

import msgspec
import structlog
import trio

from noether_nix import __version__
from noether_nix.errors import NoetherError
from noether_nix.graph.preflight import parse_capability_tokens, parse_effect_tokens
from noether_nix.model.stage import stage_from_spec
from noether_nix.registry.backend import LIFECYCLES, Backend
from noether_nix.registry.config import RegistryConfig
from noether_nix.registry.docs_page import DOCS_HTML
from noether_nix.registry.search import MAX_QUERY_CHARS

log = structlog.get_logger("noether.registry")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Runner = Callable[[Any, Any, bool, dict[str, Any]], Awaitable[dict[str, Any]]]

DEFAULT_LIMIT, MAX_LIMIT = 50, 200
MAX_OFFSET = 10**9
MAX_QUERY_FIELDS = 32
SEARCH_DEFAULT, SEARCH_MAX = 20, 200
# Wire codes (upstream's four, and the ones for what upstream's routes never say).
_WIRE: dict[str, tuple[int, str]] = {
    "stage_not_found": (404, "NOT_FOUND"),
    "not_found": (404, "NOT_FOUND"),
    "unauthorized": (401, "UNAUTHORIZED"),
    "already_exists": (409, "ALREADY_EXISTS"),
    "conflict": (409, "CONFLICT"),
    "invalid_transition": (409, "CONFLICT"),
    "method_not_allowed": (405, "METHOD_NOT_ALLOWED"),
    "body_too_large": (413, "PAYLOAD_TOO_LARGE"),
    "request_timeout": (408, "TIMEOUT"),
    "timeout": (503, "TIMEOUT"),
    "busy": (503, "BUSY"),
    "store_unavailable": (503, "UNAVAILABLE"),
    "internal_error": (500, "INTERNAL_ERROR"),
}
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_ALLOWED_RUN_OPTIONS = {"budget_cents", "allow_effects", "allow_capabilities", "timeout_secs",
                        "max_output_bytes", "optimize", "cache", "allow_unsigned", "refinement_checks"}


def wire(e: NoetherError) -> tuple[int, dict[str, Any]]:
    status, code = _WIRE.get(e.code, (400, "VALIDATION_FAILED"))
    err: dict[str, Any] = {"code": code, "message": str(e), "reason": e.code}
    if e.hint:
        err["hint"] = e.hint
    if e.details:
        err["details"] = e.details
    return status, err


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.duration_ms: dict[str, float] = {}
        self.counters = {"stages_published": 0, "stages_already_present": 0, "auth_failures": 0,
                         "runs_ok": 0, "runs_failed": 0, "bodies_too_large": 0, "timeouts": 0,
                         "internal_errors": 0}
        self.in_flight = 0
        self.started = time.time()

    def observe(self, method: str, route: str, status: int, ms: float) -> None:
        # Labels from a fixed set: a client inventing methods must not grow this table.
        key = (method if method in _METHODS else "OTHER", route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        self.duration_ms[route] = self.duration_ms.get(route, 0.0) + ms

    def render(self, store: dict[str, Any] | None) -> bytes:
        lines = ["# TYPE noether_registry_requests_total counter"]
        for (m, r, s), n in sorted(self.requests.items()):
            lines.append(f'noether_registry_requests_total{{method="{m}",route="{r}",status="{s}"}} {n}')
        lines.append("# TYPE noether_registry_request_duration_ms_sum counter")
        for r, ms in sorted(self.duration_ms.items()):
            lines.append(f'noether_registry_request_duration_ms_sum{{route="{r}"}} {ms:.3f}')
        for k, v in sorted(self.counters.items()):
            lines.append(f"# TYPE noether_registry_{k}_total counter")
            lines.append(f"noether_registry_{k}_total {v}")
        lines.append(f"noether_registry_requests_in_flight {self.in_flight}")
        lines.append(f"noether_registry_uptime_seconds {int(time.time() - self.started)}")
        if store:
            for lc, n in sorted(store["by_lifecycle"].items()):
                lines.append(f'noether_registry_stages{{lifecycle="{lc.lower()}"}} {n}')
        return ("\n".join(lines) + "\n").encode()


class _Response(msgspec.Struct):
    status: int
    body: bytes
    content_type: str = "application/json"
    code: str | None = None


def _ok(result: Any, status: int = 200) -> _Response:
    return _Response(status, msgspec.json.encode({"ok": True, "result": result}) + b"\n")


def _fail(e: NoetherError) -> _Response:
    status, err = wire(e)
    return _Response(status, msgspec.json.encode({"ok": False, "error": err}) + b"\n", code=err["code"])


class RegistryApp:
    """The ASGI callable. ``backend`` is shared by all requests, one call at a time."""

    def __init__(self, config: RegistryConfig, backend: Backend, *, runner: Runner | None = None) -> None:
        self.config = config
        self.backend = backend
        self.runner = runner
        self.db = trio.CapacityLimiter(1)
        self.runs = trio.Semaphore(max(config.max_concurrent_runs, 0)) if config.max_concurrent_runs else None
        self.metrics = Metrics()

    async def call_db(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return await trio.to_thread.run_sync(lambda: fn(*args, **kw), limiter=self.db)

    # ------------------------------------------------------------ embeddings, off the database slot

    async def embed_missing(self) -> int:
        """Vectors for the stages that have none: the provider is called between two
        database calls, never inside one (a slow provider must not stall every
        other request behind the one database slot)."""
        b = self.backend
        assert b.embeddings is not None
        stage_ids, texts = await self.call_db(b.missing_vectors)
        if not stage_ids:
            return 0
        vectors = await trio.to_thread.run_sync(b.embeddings.embed, texts, abandon_on_cancel=True)
        n: int = await self.call_db(b.store_vectors, stage_ids, vectors)
        return n

    async def query_vector(self, q: str) -> Any:
        """The query's vector, or the NoetherError that says why search is lexical this time."""
        b = self.backend
        assert b.embeddings is not None
        try:
            await self.embed_missing()
            return await trio.to_thread.run_sync(b.embeddings.embed_query, q[:MAX_QUERY_CHARS],
                                                 abandon_on_cancel=True)
        except NoetherError as e:
            return e

    # ------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        started = time.monotonic()
        method = scope.get("method", "GET")
        route = "other"
        self.metrics.in_flight += 1
        try:
            resp, route = await self._handle(scope, receive)
        except Exception:  # a bug must cost one request, never the server
            log.exception("request_failed", method=method, path=scope.get("path"))
            self.metrics.counters["internal_errors"] += 1
            resp = _fail(NoetherError("internal_error", "internal error; the registry's log has the details"))
        finally:
            self.metrics.in_flight -= 1
        headers = [(b"content-type", resp.content_type.encode()), (b"content-length", str(len(resp.body)).encode()),
                   (b"x-noether-registry-version", __version__.encode())]
        if resp.status == 413:
            headers.append((b"connection", b"close"))
        try:
            with trio.move_on_after(self.config.request_timeout_s):
                await send({"type": "http.response.start", "status": resp.status, "headers": headers})
                await send({"type": "http.response.body", "body": resp.body})
        finally:
            # Logged and counted even when the client has gone before the answer's
            # last byte (a client given a 408 often closes after reading its head).
            ms = (time.monotonic() - started) * 1000
            self.metrics.observe(method, route, resp.status, ms)
            client = scope.get("client") or ("", 0)
            log.info("request", method=method, path=scope.get("path"), route=route, status=resp.status,
                     code=resp.code, duration_ms=round(ms, 2), bytes_out=len(resp.body), client=client[0])

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        cap = self.config.max_body_bytes
        for name, value in scope.get("headers", []):
            if name.lower() == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    raise NoetherError("validation_failed", "invalid Content-Length") from None
                if declared > cap:
                    raise NoetherError("body_too_large", f"request body over {cap} bytes")
        body = bytearray()
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise NoetherError("request_timeout", "the client went away")
            body.extend(msg.get("body", b""))
            if len(body) > cap:
                raise NoetherError("body_too_large", f"request body over {cap} bytes")
            if not msg.get("more_body", False):
                return bytes(body)

    async def _handle(self, scope: Scope, receive: Receive) -> tuple[_Response, str]:
        method = scope.get("method", "GET")
        raw_path = scope.get("raw_path") or scope.get("path", "/").encode()
        path = raw_path.decode("latin-1").split("?", 1)[0]
        parts = [unquote(p, errors="replace") for p in path.strip("/").split("/") if p] if path != "/" else []
        route = _route_name(parts)
        try:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"), max_num_fields=MAX_QUERY_FIELDS)
        except ValueError:
            return _fail(NoetherError("validation_failed", f"more than {MAX_QUERY_FIELDS} query parameters")), route
        try:
            with trio.fail_after(self.config.request_timeout_s):
                body = await self._read_body(scope, receive)
        except trio.TooSlowError:
            self.metrics.counters["timeouts"] += 1
            return _fail(NoetherError("request_timeout", "the request body was not sent in time")), route
        except NoetherError as e:
            if e.code == "body_too_large":
                self.metrics.counters["bodies_too_large"] += 1
            return _fail(e), route
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            limit = self.config.run_timeout_s if route == "/compositions/run" else self.config.request_timeout_s
            with trio.fail_after(limit):
                return await self._route(method, parts, query, headers, body), route
        except trio.TooSlowError:
            self.metrics.counters["timeouts"] += 1
            return _fail(NoetherError("timeout", f"the request took longer than {limit:g} s")), route
        except NoetherError as e:
            return _fail(e), route
        except RecursionError:
            return _fail(NoetherError("validation_failed", "the request is nested too deeply")), route
        except Exception:  # a bug must cost one request, never the server
            log.exception("request_failed", method=method, route=route)
            self.metrics.counters["internal_errors"] += 1
            return _fail(NoetherError("internal_error", "internal error; the registry's log has the details")), route

    # ------------------------------------------------------------ routing

    def _need_key(self, headers: dict[str, str]) -> None:
        want = self.config.api_key
        if want == "":
            return  # authentication disabled by configuration (logged at start)
        given = headers.get("x-api-key")
        if given is None and headers.get("authorization", "").lower().startswith("bearer "):
            given = headers["authorization"][7:].strip()
        if want is None:
            self.metrics.counters["auth_failures"] += 1
            raise NoetherError("unauthorized", "this registry accepts no writes (NOETHER_API_KEY is not set on "
                               "the server)")
        if not given or not hmac.compare_digest(given.encode(), want.encode()):
            self.metrics.counters["auth_failures"] += 1
            raise NoetherError("unauthorized", "missing or wrong API key (send it as the X-API-Key header)")

    async def _route(self, method: str, parts: list[str], query: dict[str, list[str]], headers: dict[str, str],
                     body: bytes) -> _Response:
        b = self.backend
        match parts:
            case [] if method == "GET":
                return _ok({"service": "noether-registry", "version": __version__, "docs": "/docs",
                            "health": "/health"})
            case ["health"] if method == "GET":
                return _ok({"status": "ok", "version": __version__, "backend": b.kind,
                            "search": "hybrid" if b.embeddings else "lexical",
                            "store": await self.call_db(b.stats)})
            case ["metrics"] if method == "GET":
                try:
                    stats = await self.call_db(b.stats)
                except NoetherError:
                    stats = None
                return _Response(200, self.metrics.render(stats), "text/plain; version=0.0.4")
            case ["docs"] if method == "GET":
                return _Response(200, DOCS_HTML.encode(), "text/html; charset=utf-8")
            case ["stages"] if method == "GET":
                lifecycle = _lifecycle(query)
                limit = _int(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
                offset = _int(query, "offset", 0, 0, MAX_OFFSET)
                tag = query["tag"][-1] if "tag" in query else None
                stages, total = await self.call_db(b.list_page, lifecycle, tag, limit, offset)
                return _ok({"stages": [b.export(s) for s in stages], "total": total, "limit": limit,
                            "offset": offset})
            case ["stages", "search"] if method == "GET":
                q = query.get("q", [""])[-1]
                if not q.strip():
                    raise NoetherError("validation_failed", "give a query: /stages/search?q=…", path="q")
                limit = _int(query, "limit", SEARCH_DEFAULT, 1, SEARCH_MAX)
                lifecycle = _lifecycle(query)
                qv = await self.query_vector(q) if b.embeddings is not None else None
                return _ok(await self.call_db(b.search, q, lifecycle=lifecycle, limit=limit, query_vector=qv))
            case ["stages", ref] if method == "GET":
                return _ok(b.export(await self.call_db(b.get, ref)))
            case ["stages"] if method == "POST":
                self._need_key(headers)
                return await self._publish(body, draft=query.get("draft", ["0"])[-1] in ("1", "true", "yes"))
            case ["stages", ref] if method == "DELETE":
                self._need_key(headers)
                return _ok(await self.call_db(b.delete, ref))
            case ["stages", ref, "lifecycle"] if method in ("PATCH", "POST"):
                self._need_key(headers)
                change = _decode(body, _LifecycleBody)
                successor = change.successor_id or change.successor
                return _ok(await self.call_db(b.change_lifecycle, ref, change.lifecycle, successor))
            case ["compositions", "run"] if method == "POST":
                self._need_key(headers)
                return await self._run(body)
        if _route_name(parts) != "other":
            raise NoetherError("method_not_allowed", f"{method} is not allowed on /{'/'.join(parts)}")
        raise NoetherError("not_found", f"no route {method} /{'/'.join(parts)}")

    async def _publish(self, body: bytes, *, draft: bool) -> _Response:
        doc = _decode(body, Any)
        stage = stage_from_spec(doc, path="body")  # the parser `noether stage add` uses
        result = await self.call_db(self.backend.add, stage, draft=draft)
        self.metrics.counters["stages_published" if result.is_new else "stages_already_present"] += 1
        if result.is_new:
            log.info("stage_published", id=result.id, lifecycle=result.lifecycle, supersedes=result.supersedes,
                     unsigned=bool(result.warnings))
        for w in result.warnings:
            log.warning("stage_warning", id=result.id, warning=w)
        return _ok(msgspec.to_builtins(result), 201 if result.is_new else 200)

    async def _run(self, body: bytes) -> _Response:
        if self.runner is None or self.runs is None:
            raise NoetherError("busy", "this registry does not run compositions (NOETHER_REGISTRY_MAX_RUNS=0)")
        req = _decode(body, _RunBody)
        options = dict(req.options or {})
        unknown = sorted(set(options) - _ALLOWED_RUN_OPTIONS)
        if unknown:
            raise NoetherError("validation_failed", f"run options not accepted by the registry: {', '.join(unknown)}",
                               path="options")
        if options.get("allow_unsigned") and not self.config.allow_unsigned_active:
            raise NoetherError("validation_failed", "this registry does not run unsigned stages",
                               path="options.allow_unsigned")
        options["allow_effects"] = _within(options.get("allow_effects"), self.config.run_effects, "allow_effects",
                                           "NOETHER_REGISTRY_RUN_EFFECTS", parse_effect_tokens)
        options["allow_capabilities"] = _within(options.get("allow_capabilities"), self.config.run_capabilities,
                                                "allow_capabilities", "NOETHER_REGISTRY_RUN_CAPABILITIES",
                                                parse_capability_tokens)
        try:
            self.runs.acquire_nowait()
        except trio.WouldBlock:
            raise NoetherError("busy", "the registry is running as many compositions as it may; try again") from None
        try:
            result = await self.runner(req.graph, req.input, req.dry_run, options)
        finally:
            self.runs.release()
        if not req.dry_run:
            self.metrics.counters["runs_ok" if result.get("status") == "ok" else "runs_failed"] += 1
        return _ok(result)


def _within(asked: Any, granted: list[str], option: str, setting: str,
            parse: Callable[[list[str]], set[Any]]) -> list[str]:
    """What a run may use: the operator's grant, or the part of it the run asks
    for. A run's stages execute on this host as the registry's user, so a key
    holder gets no effect (the network, the host's files) the operator did
    not list."""
    if asked is None:
        return list(granted)
    if not isinstance(asked, list) or not all(isinstance(t, str) for t in asked):
        raise NoetherError("validation_failed", f"options.{option} must be a list of names", path=f"options.{option}")
    extra = parse(asked) - parse(granted)
    if extra:
        names = ", ".join(sorted(str(e) for e in extra))
        raise NoetherError("validation_failed", f"this registry runs no stage with {names} (the operator grants "
                           f"{', '.join(granted) or 'nothing'} in {setting})", path=f"options.{option}")
    return list(asked)


class _LifecycleBody(msgspec.Struct):
    lifecycle: str
    successor_id: str | None = None
    successor: str | None = None  # the daemon's spelling


class _RunBody(msgspec.Struct):
    graph: Any
    input: Any = None
    dry_run: bool = False
    options: dict[str, Any] | None = None


def _decode(body: bytes, kind: Any) -> Any:
    if not body.strip():
        raise NoetherError("validation_failed", "the request needs a JSON body")
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as e:
        raise NoetherError("validation_failed", f"invalid request body: {e}") from None
    except msgspec.DecodeError as e:
        raise NoetherError("invalid_json", f"the request body is not JSON: {e}") from None


def _route_name(parts: list[str]) -> str:
    match parts:
        case []:
            return "/"
        case ["health"] | ["metrics"] | ["docs"] | ["stages"]:
            return "/" + parts[0]
        case ["stages", "search"]:
            return "/stages/search"
        case ["stages", _]:
            return "/stages/{id}"
        case ["stages", _, "lifecycle"]:
            return "/stages/{id}/lifecycle"
        case ["compositions", "run"]:
            return "/compositions/run"
    return "other"


def _int(query: dict[str, list[str]], key: str, default: int, lo: int, hi: int) -> int:
    if key not in query:
        return default
    raw = query[key][-1].strip()
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not lo <= value <= hi:
        raise NoetherError("validation_failed", f"{key} must be an integer from {lo} to {hi} (got {raw[:32]!r})",
                           path=key)
    return value


def _lifecycle(query: dict[str, list[str]]) -> str:
    value = query.get("lifecycle", ["active"])[-1].strip().lower() or "active"
    if value != "all" and value not in LIFECYCLES:
        raise NoetherError("validation_failed", f"unknown lifecycle {value[:32]!r} (use active, draft, deprecated, "
                           "tombstone or all)", path="lifecycle")
    return value
