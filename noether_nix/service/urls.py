"""Where each endpoint is on the daemon: the client's view of ``service.endpoints``, as plain data.

A client of a live daemon needs only each endpoint's method, path and
whether it may take long; importing the table itself (msgspec Structs, the
parameter types) would cost more than the rest of such a process. The
table stays the schema: ``ROUTES`` is its projection (a test holds the two
equal), and ``endpoints.target`` builds requests with ``target`` below.
"""

from __future__ import annotations

import re

TYPE_CHECKING = False  # no typing import on the CLI's entry (see errors.py)
if TYPE_CHECKING:
    from typing import Any

#: name → (method, path, slow): ``Endpoint.method``, ``.path`` and ``.slow`` of every endpoint.
ROUTES: dict[str, tuple[str, str, bool]] = {
    "health": ("GET", "/v1/health", False),
    "metrics": ("GET", "/metrics", False),
    "check": ("POST", "/v1/check", False),
    "run": ("POST", "/v1/runs", True),
    "runs_list": ("GET", "/v1/runs", False),
    "run_get": ("GET", "/v1/runs/{ref}", False),
    "run_cancel": ("DELETE", "/v1/runs/{run_id}", False),
    "trace_get": ("GET", "/v1/traces/{ref}", False),
    "stage_list": ("GET", "/v1/stages", False),
    "stage_add": ("POST", "/v1/stages", True),
    "stage_get": ("GET", "/v1/stages/{ref}", False),
    "stage_lifecycle": ("PATCH", "/v1/stages/{ref}/lifecycle", False),
    "stage_verify": ("GET", "/v1/stages/{ref}/verify", False),
    "verify_all": ("GET", "/v1/verify", False),
    "stage_test": ("POST", "/v1/stages/{ref}/test", True),
    "test_all": ("POST", "/v1/test", True),
    "warmup": ("POST", "/v1/warmup", True),
    "store_stats": ("GET", "/v1/store/stats", False),
    "store_export": ("GET", "/v1/store/export", False),
    "store_import": ("POST", "/v1/store/import", False),
}

SEGMENT = re.compile(r"\{(\w+)\}")


def has_body(method: str) -> bool:
    """Whether the parameters travel as a JSON body (else in the path and the query string)."""
    return method in ("POST", "PATCH", "PUT")


def target(method: str, path: str, values: dict[str, Any]) -> tuple[str, Any]:
    """The request target (path and query) and JSON body that carry the parameters ``values``
    (JSON builtins): path segments from their names, the rest as the body or the query string."""
    names = SEGMENT.findall(path)
    if names:
        from urllib.parse import quote

        path = SEGMENT.sub(lambda m: quote(str(values[m.group(1)]), safe=""), path)
    rest = {k: v for k, v in values.items() if k not in names}
    if has_body(method):
        return path, rest
    pairs: list[tuple[str, str]] = []
    for k, v in rest.items():
        for item in v if isinstance(v, list) else [v]:
            pairs.append((k, ("1" if item else "0") if isinstance(item, bool) else str(item)))
    if not pairs:
        return path, None
    from urllib.parse import urlencode

    return f"{path}?{urlencode(pairs)}", None
