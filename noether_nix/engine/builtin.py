"""Stdlib stages the engine answers itself: kv_* and the store-aware ones.

They touch the engine's own state (its key-value table, its stage store,
its run traces), which a sandboxed program could not reach; everything
else a stdlib stage does runs in-process (Pure) or in a sandbox.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from noether_nix.errors import NoetherError
from noether_nix.model.types import display, parse_type
from noether_nix.store.kv import KvStore
from noether_nix.store.runs import RunStore
from noether_nix.store.stages import StageStore

BuiltinImpl = Callable[[Any], Any]


class StageFailed(NoetherError):
    def __init__(self, message: str) -> None:
        super().__init__("stage_failed", message, exit_code=3)


def _record(value: Any, *required: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise StageFailed(f"expected a record with {', '.join(required)}, got {type(value).__name__}")
    missing = [k for k in required if k not in value]
    if missing:
        raise StageFailed(f"missing field(s): {', '.join(missing)}")
    return value


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise StageFailed(f"`{field}` must be text")
    return value


def _namespace(rec: dict[str, Any]) -> str | None:
    ns = rec.get("namespace")
    if ns is not None and not isinstance(ns, str):
        raise StageFailed("`namespace` must be text or null")
    return ns


def kv_impls(kv: KvStore) -> dict[str, BuiltinImpl]:
    def kv_set(v: Any) -> Any:
        r = _record(v, "key", "value")
        kv.set(_namespace(r), _text(r["key"], "key"), r["value"])
        return "ok"

    def kv_get(v: Any) -> Any:
        r = _record(v, "key")
        return kv.get(_namespace(r), _text(r["key"], "key"))

    def kv_delete(v: Any) -> Any:
        r = _record(v, "key")
        return kv.delete(_namespace(r), _text(r["key"], "key"))

    def kv_exists(v: Any) -> Any:
        r = _record(v, "key")
        return kv.exists(_namespace(r), _text(r["key"], "key"))

    def kv_list(v: Any) -> Any:
        r = _record(v, "prefix")
        return kv.list(_namespace(r), _text(r["prefix"], "prefix"))

    return {"kv_set": kv_set, "kv_get": kv_get, "kv_delete": kv_delete,
            "kv_exists": kv_exists, "kv_list": kv_list}


def store_impls(stages: StageStore, runs: RunStore) -> dict[str, BuiltinImpl]:
    def stage_describe(v: Any) -> Any:
        r = _record(v, "id")
        try:
            s = stages.resolve(_text(r["id"], "id"))
        except NoetherError as e:
            raise StageFailed(e.message) from None
        return {
            "id": s.id,
            "description": s.description,
            "input": display(s.input),
            "output": display(s.output),
            "effects": [type(e).__struct_config__.tag for e in s.effects.effects],
            "lifecycle": s.state.lower(),
        }

    def store_search(v: Any) -> Any:
        # Lexical scoring: share of query words found in name/description/tags.
        r = _record(v, "query")
        query = _text(r["query"], "query").lower().split()
        limit = r.get("limit") or 10
        if not isinstance(limit, (int, float)) or limit < 1:
            raise StageFailed("`limit` must be a positive number")
        scored = []
        for s in stages.all():
            if s.state != "Active":
                continue
            hay = " ".join([s.name or "", s.description, *s.tags, *s.aliases]).lower()
            hits = sum(1 for w in query if w in hay)
            if hits:
                scored.append((hits / max(len(query), 1), s))
        scored.sort(key=lambda x: (-x[0], x[1].description))
        return [
            {"id": s.id, "description": s.description, "input": display(s.input),
             "output": display(s.output), "score": round(score, 3)}
            for score, s in scored[: int(limit)]
        ]

    def type_check(v: Any) -> Any:
        from noether_nix.model.subtyping import is_subtype_of

        r = _record(v, "sub", "sup")
        try:
            sub, sup = parse_type(r["sub"], path="sub"), parse_type(r["sup"], path="sup")
        except NoetherError as e:
            raise StageFailed(str(e)) from None
        res = is_subtype_of(sub, sup)
        reason = getattr(res, "reason", None)
        return {"compatible": reason is None, "reason": None if reason is None else str(reason)}

    def trace_read(v: Any) -> Any:
        r = _record(v, "composition_id")
        run = runs.latest(_text(r["composition_id"], "composition_id"))
        if run is None:
            raise StageFailed(f"no trace for composition {r['composition_id']}")
        return {"trace": run["trace"]}

    return {"stage_describe": stage_describe, "store_search": store_search,
            "type_check": type_check, "trace_read": trace_read}
