"""UI stages (upstream module ``ui``)."""

from __future__ import annotations

from typing import Any

from noether_nix.stdlib._shapes import (
    Impl,
    StageFailure,
    need_record,
    optional_text,
    registrar,
    show,
)

IMPLS: dict[str, Impl] = {}
stage = registrar(IMPLS)


@stage("router")
def router(value: Any) -> Any:
    record = need_record(value, "routes")
    routes = record["routes"]
    if not isinstance(routes, dict):
        raise StageFailure(f"field 'routes' must be a record of route to VNode, got {show(routes)}")
    route = optional_text(record, "route") or "/"
    default = optional_text(record, "default") or "/"
    if route in routes:
        return routes[route]
    # As upstream: the longest route that is a prefix of the path, then the default.
    prefixes = [key for key in routes if route.startswith(key)]
    if prefixes:
        return routes[max(prefixes, key=len)]
    if default in routes:
        return routes[default]
    raise StageFailure(f"route {route!r} matches no route and the default {default!r} is not in routes")
