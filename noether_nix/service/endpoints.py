"""The API, declared once.

Every operation the CLI can ask of noether is one row here: its HTTP
method and path on the daemon, its parameters (a msgspec Struct: path
segments and query string, or path segments and the JSON body), the
handler that computes it (``module:function``, imported on first use so a
client talking to a daemon never loads the engine), and whether it needs
write trust. The daemon's routes, the daemon client's URLs and the local
backend's calls are all generated from this table: a new command is one
row, one handler and one backend method.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Callable
from typing import Annotated, Any, get_args, get_origin, get_type_hints

import msgspec

from noether_nix.errors import NoetherError
from noether_nix.service import urls

# ---------------------------------------------------------------- parameters
# Run options are decoded as ``noether_nix.engine.options.RunOptions`` by the
# handlers (this module must stay light: clients import it).


#: The lifecycles ``stage list --lifecycle`` accepts.
LIST_LIFECYCLES = ("draft", "active", "deprecated", "tombstone", "all")


class NoParams(msgspec.Struct, forbid_unknown_fields=True):
    pass


class Ref(msgspec.Struct, forbid_unknown_fields=True):
    ref: str


class RunId(msgspec.Struct, forbid_unknown_fields=True):
    run_id: str


class StageList(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    lifecycle: str = "all"
    tag: list[str] = msgspec.field(default_factory=list)
    full_ids: bool = True


class StageAdd(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    spec: Any  # a stage spec or a full Stage JSON
    draft: bool = False
    build: bool = False


class Lifecycle(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    ref: str
    lifecycle: str
    successor: str | None = None


class Check(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    graph: Any
    input: Any = None
    check_input: bool = False
    options: dict[str, Any] | None = None


class Run(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    graph: Any
    input: Any = None
    options: dict[str, Any] | None = None


class RunsList(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 50


class Warmup(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    refs: list[str] = msgspec.field(default_factory=list)


class Import(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    doc: Any
    source: str = "store.json"  # how errors name the document (the client's file)


# ---------------------------------------------------------------- the table


class Endpoint(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    method: str
    path: str  # segments in braces are parameters: /v1/stages/{ref}
    handler: str  # "module:function", called as function(context, params)
    params: type[msgspec.Struct] = NoParams
    #: Only peers trusted to change the store may call it.
    write: bool = False
    #: Answered as a stream of NDJSON events (a run), not one envelope.
    stream: bool = False
    #: May take long (Nix builds, runs every example): clients wait without a timeout.
    slow: bool = False
    #: Answered by the daemon itself (its health, its in-flight runs); not a local command.
    daemon_only: bool = False
    #: The CLI command that uses it (README's endpoint table is generated from these).
    command: str = ""

    @property
    def has_body(self) -> bool:
        return urls.has_body(self.method)

    def resolve(self) -> Callable[..., Any]:
        module, _, func = self.handler.partition(":")
        return getattr(importlib.import_module(module), func)  # type: ignore[no-any-return]


_G, _S = "noether_nix.service.graph", "noether_nix.service.stages"
_T, _ST, _D = "noether_nix.service.stage_test", "noether_nix.service.store", "noether_nix.server.status"

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(name="health", method="GET", path="/v1/health", handler=f"{_D}:health", daemon_only=True),
    Endpoint(name="metrics", method="GET", path="/metrics", handler=f"{_D}:metrics", daemon_only=True),
    Endpoint(name="check", command="check, run --dry-run", method="POST", path="/v1/check", handler=f"{_G}:check_graph", params=Check),
    Endpoint(name="run", command="run", method="POST", path="/v1/runs", handler=f"{_G}:run_graph", params=Run, stream=True,
             slow=True),
    Endpoint(name="runs_list", command="runs", method="GET", path="/v1/runs", handler=f"{_G}:recent_runs", params=RunsList),
    Endpoint(name="run_get", command="trace", method="GET", path="/v1/runs/{ref}", handler=f"{_G}:find_run", params=Ref),
    Endpoint(name="run_cancel", method="DELETE", path="/v1/runs/{run_id}", handler=f"{_D}:cancel_run",
             params=RunId, daemon_only=True),
    Endpoint(name="trace_get", method="GET", path="/v1/traces/{ref}", handler=f"{_G}:latest_trace", params=Ref),
    Endpoint(name="stage_list", command="stage list", method="GET", path="/v1/stages", handler=f"{_S}:list_stages", params=StageList),
    Endpoint(name="stage_add", command="stage add", method="POST", path="/v1/stages", handler=f"{_S}:add_stage", params=StageAdd,
             write=True, slow=True),
    Endpoint(name="stage_get", command="stage get", method="GET", path="/v1/stages/{ref}", handler=f"{_S}:get_stage", params=Ref),
    Endpoint(name="stage_lifecycle", command="stage activate / deprecate / tombstone", method="PATCH", path="/v1/stages/{ref}/lifecycle",
             handler=f"{_S}:change_lifecycle", params=Lifecycle, write=True),
    Endpoint(name="stage_verify", command="stage verify REF", method="GET", path="/v1/stages/{ref}/verify", handler=f"{_S}:verify_stages",
             params=Ref),
    Endpoint(name="verify_all", command="stage verify", method="GET", path="/v1/verify", handler=f"{_S}:verify_stages"),
    # Tests run any stored stage, unsigned and Draft ones too: a writer's operation.
    Endpoint(name="stage_test", command="stage test REF", method="POST", path="/v1/stages/{ref}/test", handler=f"{_T}:run_stage_tests",
             params=Ref, write=True, slow=True),
    Endpoint(name="test_all", command="stage test", method="POST", path="/v1/test", handler=f"{_T}:run_stage_tests", write=True,
             slow=True),
    Endpoint(name="warmup", command="warmup", method="POST", path="/v1/warmup", handler=f"{_G}:warmup_stages", params=Warmup,
             write=True, slow=True),
    Endpoint(name="store_stats", command="store stats", method="GET", path="/v1/store/stats", handler=f"{_ST}:store_stats"),
    Endpoint(name="store_export", command="store export", method="GET", path="/v1/store/export", handler=f"{_ST}:export_store"),
    Endpoint(name="store_import", command="store import", method="POST", path="/v1/store/import", handler=f"{_ST}:import_stages",
             params=Import, write=True),
)
BY_NAME: dict[str, Endpoint] = {e.name: e for e in ENDPOINTS}

_SEGMENT = urls.SEGMENT


def _pattern(path: str) -> re.Pattern[str]:
    out, pos = "^", 0
    for m in _SEGMENT.finditer(path):
        out += re.escape(path[pos:m.start()]) + f"(?P<{m.group(1)}>[^/]+)"
        pos = m.end()
    return re.compile(out + re.escape(path[pos:]) + "$")


_PATTERNS: list[tuple[Endpoint, re.Pattern[str]]] = [(e, _pattern(e.path)) for e in ENDPOINTS]


def match(method: str, path: str) -> tuple[Endpoint, dict[str, str]]:
    """The endpoint serving ``method path`` and its path parameters (still percent-encoded)."""
    path = path.rstrip("/") or "/"
    allowed = []
    for endpoint, pattern in _PATTERNS:
        m = pattern.match(path)
        if m is None:
            continue
        if endpoint.method == method:
            return endpoint, m.groupdict()
        allowed.append(endpoint.method)
    if allowed:
        raise NoetherError("method_not_allowed", f"{path} takes {', '.join(sorted(set(allowed)))}, not {method}",
                           path=path)
    raise NoetherError("not_found", f"no endpoint {method} {path}", path=path)


def _is_list(tp: Any) -> bool:
    return get_origin(tp) is list or tp is list or any(get_origin(a) is list for a in get_args(tp))


@functools.cache
def _hints(params: type) -> dict[str, Any]:
    """A parameters type's fields and their types (resolved once: it compiles each annotation)."""
    return get_type_hints(params, include_extras=True)


def params_from(endpoint: Endpoint, path_params: dict[str, str], query: dict[str, list[str]],
                body: Any) -> msgspec.Struct:
    """The endpoint's parameters from a request: path segments plus the query
    string (decoded leniently: "50" is a number) or the JSON body."""
    hints = _hints(endpoint.params)
    raw: dict[str, Any] = {}
    if endpoint.has_body:
        if body is not None and not isinstance(body, dict):
            raise NoetherError("usage", "the request body must be a JSON object", path="body")
        raw.update(body or {})
    else:
        for key, values in query.items():
            if key not in hints:
                raise NoetherError("usage", f"unknown query parameter {key!r} (known: {', '.join(hints) or 'none'})",
                                   path=key)
            raw[key] = values if _is_list(hints[key]) else values[-1]
    raw.update(path_params)
    try:
        return msgspec.convert(raw, endpoint.params, strict=endpoint.has_body)
    except msgspec.ValidationError as e:
        raise NoetherError("usage", f"invalid parameters for {endpoint.method} {endpoint.path}: {e}") from None


def markdown_table() -> str:
    """The endpoint table as README shows it (a test keeps the two equal)."""
    rows = ["| endpoint | command | |", "|---|---|---|"]
    for e in ENDPOINTS:
        notes = [n for n, on in (("write", e.write), ("NDJSON stream", e.stream), ("daemon only", e.daemon_only))
                 if on]
        rows.append(f"| `{e.method} {e.path}` | {('`' + e.command + '`') if e.command else ''} | "
                    f"{', '.join(notes)} |")
    return "\n".join(rows)


def target(endpoint: Endpoint, params: msgspec.Struct) -> tuple[str, Any]:
    """The request target (path and query) and JSON body that carry ``params`` (``urls.target``)."""
    return urls.target(endpoint.method, endpoint.path, msgspec.to_builtins(params))
