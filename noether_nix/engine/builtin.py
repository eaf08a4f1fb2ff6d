"""Stdlib stages the engine answers itself: kv_* and the store-aware ones.

They touch the engine's own state (its key-value table, its stage store,
its run traces), which a sandboxed program could not reach; everything
else a stdlib stage does runs in-process (Pure) or in a sandbox.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from typing import Any

import msgspec

from noether_nix.errors import NoetherError
from noether_nix.model.stage import lifecycle_name, stage_from_spec
from noether_nix.model.subtyping import is_subtype_of
from noether_nix.model.types import display, parse_type
from noether_nix.stdlib._shapes import StageFailure, need_record, need_text, optional_text
from noether_nix.store.kv import KvStore
from noether_nix.store.runs import RunStore
from noether_nix.store.stages import StageStore

BuiltinImpl = Callable[[Any], Any]


def kv_impls(kv: KvStore) -> dict[str, BuiltinImpl]:
    def kv_set(v: Any) -> Any:
        r = need_record(v, "key", "value")
        kv.set(optional_text(r, "namespace"), need_text(r["key"], "field 'key'"), r["value"])
        return "ok"

    def kv_get(v: Any) -> Any:
        r = need_record(v, "key")
        return kv.get(optional_text(r, "namespace"), need_text(r["key"], "field 'key'"))

    def kv_delete(v: Any) -> Any:
        r = need_record(v, "key")
        return kv.delete(optional_text(r, "namespace"), need_text(r["key"], "field 'key'"))

    def kv_exists(v: Any) -> Any:
        r = need_record(v, "key")
        return kv.exists(optional_text(r, "namespace"), need_text(r["key"], "field 'key'"))

    def kv_list(v: Any) -> Any:
        r = need_record(v, "prefix")
        return kv.list(optional_text(r, "namespace"), need_text(r["prefix"], "field 'prefix'"))

    return {"kv_set": kv_set, "kv_get": kv_get, "kv_delete": kv_delete,
            "kv_exists": kv_exists, "kv_list": kv_list}


def store_impls(stages: StageStore, runs: RunStore) -> dict[str, BuiltinImpl]:
    def stage_describe(v: Any) -> Any:
        r = need_record(v, "id")
        try:
            s = stages.resolve(need_text(r["id"], "field 'id'"))
        except NoetherError as e:
            raise StageFailure(e.message) from None
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
        r = need_record(v, "query")
        query = need_text(r["query"], "field 'query'").lower().split()
        limit = r.get("limit") or 10
        if not isinstance(limit, (int, float)) or limit < 1:
            raise StageFailure("`limit` must be a positive number")
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
        r = need_record(v, "sub", "sup")
        try:
            sub, sup = parse_type(r["sub"], path="sub"), parse_type(r["sup"], path="sup")
        except NoetherError as e:
            raise StageFailure(str(e)) from None
        res = is_subtype_of(sub, sup)
        reason = getattr(res, "reason", None)
        return {"compatible": reason is None, "reason": None if reason is None else str(reason)}

    def trace_read(v: Any, visible_to: int | None = None) -> Any:
        r = need_record(v, "composition_id")
        run = runs.latest(need_text(r["composition_id"], "field 'composition_id'"), visible_to=visible_to)
        if run is None:
            raise StageFailure(f"no trace for composition {r['composition_id']}")
        return {"trace": run["trace"]}

    def store_add(v: Any) -> Any:
        # Added as an unsigned Draft whatever the spec says: a graph must not
        # be able to publish runnable stages; `noether stage add` signs.
        r = need_record(v, "spec")
        spec = r["spec"]
        if not isinstance(spec, dict) or not ({"name", "implementation"} <= spec.keys() or "id" in spec):
            raise StageFailure("`spec` must be a stage spec (name, input, output, implementation) or a full stage "
                              "JSON (with id); a signature alone cannot be run, so it is not added")
        try:
            stage = stage_from_spec(spec, path="spec")
            stage = msgspec.structs.replace(stage, lifecycle="Draft", ed25519_signature=None,
                                            signer_public_key=None)
            added = stages.add(stage, activate=False)
        except NoetherError as e:
            raise StageFailure(f"{e.message} (at {e.path})" if e.path else e.message) from None
        return {"id": added.id, "lifecycle": lifecycle_name(stages.get(added.id).lifecycle).lower()}  # type: ignore[union-attr]

    def composition_verify(v: Any) -> Any:
        # A chain of stages joined by `sequential`: every stage must resolve,
        # and each output must be a subtype of the next input.
        r = need_record(v, "stages", "operators")
        refs, ops = r["stages"], r["operators"]
        if not isinstance(refs, list) or not all(isinstance(x, str) for x in refs):
            raise StageFailure("`stages` must be a list of stage references")
        if not isinstance(ops, list) or not all(isinstance(x, str) for x in ops):
            raise StageFailure("`operators` must be a list of operator names")
        errors: list[str] = []
        warnings: list[str] = []
        if not refs:
            warnings.append("empty composition")
        if len(refs) > 1 and len(ops) != len(refs) - 1:
            errors.append(f"{len(refs)} stages need {len(refs) - 1} operators, got {len(ops)}")
        for op in ops:
            if op.lower() != "sequential":
                errors.append(f"operator {op!r} cannot be verified from a flat list (only sequential)")
        found: list[tuple[str, Any]] = []
        for ref in refs:
            try:
                s = stages.resolve(ref)
            except NoetherError as e:
                errors.append(f"{ref}: {e.message}")
                continue
            if s.state == "Deprecated":
                warnings.append(f"{ref} is deprecated")
            found.append((ref, s))
        for (a_ref, a), (b_ref, b) in pairwise(found):
            reason = getattr(is_subtype_of(a.output, b.input), "reason", None)
            if reason is not None:
                errors.append(f"type mismatch at edge {a_ref}->{b_ref}: {display(a.output)} is not "
                              f"{display(b.input)} ({reason})")
        return {"valid": not errors, "errors": errors, "warnings": warnings}

    return {"stage_describe": stage_describe, "store_search": store_search, "type_check": type_check,
            "trace_read": trace_read, "store_add": store_add, "composition_verify": composition_verify}
