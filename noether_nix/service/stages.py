"""``noether stage …``: add, get, list, lifecycle changes, verify."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from noether_nix.errors import NoetherError
from noether_nix.model.signing import SignatureStatus, verify_id
from noether_nix.model.stage import Stage, stage_to_json
from noether_nix.model.types import display
from noether_nix.service.context import Context
from noether_nix.service.endpoints import (
    LIST_LIFECYCLES,
    Lifecycle,
    NoParams,
    Ref,
    StageAdd,
    StageList,
)
from noether_nix.store.stages import StageStore

if TYPE_CHECKING:
    from noether_nix.nix.registry import ProgramRegistry

# The lifecycle a stage may be moved to, by the command's own name.
TRANSITIONS = {"activate": "Active", "deprecate": "Deprecated", "tombstone": "Tombstone"}


def store_stage(store: StageStore, stage: Stage, *, draft: bool = False) -> dict[str, Any]:
    """Store a parsed, signed stage, activating it unless ``draft``."""
    existing = store.get(stage.id)
    if existing is not None:
        return {"id": stage.id, "lifecycle": existing.state.lower(), "note": "already exists"}
    res = store.add(stage, activate=not draft and stage.state in ("Draft", "Active"))
    out: dict[str, Any] = {"id": res.id, "lifecycle": res.lifecycle.lower()}
    if res.supersedes:
        out["supersedes"] = res.supersedes
    return out


async def add_stage(ctx: Context, p: StageAdd) -> dict[str, Any]:
    """``stage add``: store the stage (signed: a valid embedded signature is
    kept, an unsigned stage is signed with the author key), building its
    program first unless ``build`` is false.

    Honest: a stage whose program cannot be built is not added (the build's
    error is the command's error); a simple spec's ``"lifecycle": "Draft"``
    keeps it a Draft; a stage in a language this engine stores but cannot
    run (upstream's Rust) is stored, with a warning saying so."""
    from noether_nix.graph.preflight import unrunnable_language
    from noether_nix.model.stage import is_simple_spec, spec_lifecycle, stage_from_spec
    from noether_nix.nix.registry import ProgramRegistry
    from noether_nix.store.signing import sign_for_store

    stage = sign_for_store(stage_from_spec(p.spec))
    # A simple spec sent as it is (the API) says itself; the CLI reads the file and passes `draft`.
    draft = p.draft or (is_simple_spec(p.spec) and spec_lifecycle(p.spec) == "Draft")
    store = ctx.store
    existing = store.get(stage.id)
    if existing is not None:
        return {"id": stage.id, "lifecycle": existing.state.lower(), "note": "already exists"}
    program: dict[str, Any] | None = None
    warnings: list[str] = []
    lang = unrunnable_language(stage)
    if lang is not None:
        warnings.append(f"stage {stage.label()} is written in {lang.capitalize()}: it is stored with its ID, "
                        "but noether-nix cannot run it, and a graph that uses it is refused before it runs")
    elif stage.implementation_code and stage.implementation_language and p.build:
        program = await _build_now(ProgramRegistry(store.conn), stage)
    out = store_stage(store, stage, draft=draft)
    if program is not None:
        out["program"] = program
    if warnings:
        out["warnings"] = warnings
    return out


async def _build_now(registry: ProgramRegistry, stage: Stage) -> dict[str, Any]:
    """Build the new stage's program before it is stored, so a stage that cannot
    be built is never added (and its first run does not wait for the build)."""
    from noether_nix.nix.programs import build_stage_program_async

    try:
        prog = await build_stage_program_async(stage.id, stage.implementation_language or "",
                                               stage.implementation_code or "", registry=registry)
    except NoetherError as e:
        e.hint = (f"{e.hint}; " if e.hint else "") + ("the stage was not added: fix it and add it again "
                                                      "(--no-build stores it without building its program)")
        raise
    return {"built": True, "store_path": prog.store_path, "build_ms": prog.build_ms}


def get_stage(ctx: Context, p: Ref) -> dict[str, Any]:
    return stage_to_json(ctx.store.resolve(p.ref))


def signature_text(stage: Stage) -> str:
    return f"{display(stage.input)} → {display(stage.output)}"


def list_stages(ctx: Context, p: StageList) -> dict[str, Any]:
    return stage_rows(ctx.store, lifecycle=p.lifecycle, tags=p.tag, full_ids=p.full_ids)


def stage_rows(store: StageStore, *, lifecycle: str = "active", tags: Iterable[str] = (),
               full_ids: bool = False) -> dict[str, Any]:
    if lifecycle not in LIST_LIFECYCLES:
        raise NoetherError("usage", f"unknown lifecycle {lifecycle!r} (use one of {', '.join(LIST_LIFECYCLES)})",
                           path="lifecycle", exit_code=2)
    stages = store.all()
    if lifecycle != "all":
        stages = [s for s in stages if s.state.lower() == lifecycle]
    for tag in tags:
        stages = [s for s in stages if tag in s.tags]
    stages.sort(key=lambda s: (s.description, s.id))
    rows = [stage_row(s, full_ids=full_ids) for s in stages]
    return {"stages": rows, "count": len(rows)}


def stage_row(s: Stage, *, full_ids: bool = False) -> dict[str, Any]:
    """One row of `stage list`."""
    row: dict[str, Any] = {
        "id": s.id if full_ids else s.id[:8],
        "name": s.name,
        "description": s.description,
        "signature": signature_text(s),
        "effects": s.effects.display(),
        "lifecycle": s.state,
    }
    if s.tags:
        row["tags"] = s.tags
    return row


def change_lifecycle(ctx: Context, p: Lifecycle) -> dict[str, Any]:
    """Move a stage to ``p.lifecycle`` (Active, Deprecated with a successor, Tombstone)."""
    return move_stage(ctx.store, p.ref, p.lifecycle, successor=p.successor)


def move_stage(store: StageStore, ref: str, to: str, *, successor: str | None = None,
               registry: ProgramRegistry | None = None) -> dict[str, Any]:
    target = to.capitalize()
    if target not in TRANSITIONS.values():
        raise NoetherError("usage", f"cannot move a stage to {to!r} (use active, deprecated or tombstone)",
                           path="lifecycle", exit_code=2)
    stage = store.resolve(ref)
    succ = store.resolve(successor).id if target == "Deprecated" and successor else None
    deprecated = store.transition(stage.id, target, successor_id=succ)  # type: ignore[arg-type]
    out: dict[str, Any] = {"id": stage.id, "lifecycle": target.lower()}
    if succ:
        out["successor_id"] = succ
    if deprecated:
        out["supersedes"] = deprecated
    if target == "Tombstone":
        from noether_nix.nix.registry import ProgramRegistry

        # A tombstoned stage's Nix program may be garbage-collected.
        (registry or ProgramRegistry(store.conn)).release(stage.id)
    return out


def verify_stage(stage: Stage) -> dict[str, Any]:
    from noether_nix.model.properties import check_property
    from noether_nix.model.stage import check_identity
    from noether_nix.model.values import conforms

    problems: list[str] = []
    try:
        check_identity(stage)
        hash_ok = True
    except NoetherError as e:
        hash_ok = False
        problems.append(e.message)
    sig = verify_id(stage.id, stage.ed25519_signature, stage.signer_public_key)
    if sig is not SignatureStatus.VALID:
        problems.append(f"signature: {sig.value}")
    example_errors = 0
    for i, ex in enumerate(stage.examples):
        for side, value, t in (("input", ex.input, stage.input), ("output", ex.output, stage.output)):
            err = conforms(value, t)
            if err:
                example_errors += 1
                problems.append(f"example {i} {side}: {err}")
    violations = 0
    if stage.properties and not stage.examples:
        problems.append("properties are declared but there are no examples to check them on")
    for prop in stage.properties:
        for i, ex in enumerate(stage.examples):
            why = check_property(prop, ex.input, ex.output)
            if why:
                violations += 1
                problems.append(f"property {prop.__struct_config__.tag} on example {i}: {why}")
    return {
        "id": stage.id,
        "name": stage.name,
        "status": "passed" if not problems else "failed",
        "details": {
            "hash": "ok" if hash_ok else "mismatch",
            "signature": sig.value,
            "examples": len(stage.examples),
            "example_type_errors": example_errors,
            "properties": len(stage.properties),
            "property_violations": violations,
            "problems": problems,
        },
    }


def verify_stages(ctx: Context, p: Ref | NoParams) -> dict[str, Any]:
    """Verify one stage or all; a failure is in the data (see ``verification_error``)."""
    ref = getattr(p, "ref", None)
    store = ctx.store
    stages = [store.resolve(ref)] if ref else store.all()
    results = [verify_stage(s) for s in stages]
    failed = sum(1 for r in results if r["status"] == "failed")
    return {"total": len(results), "passed": len(results) - failed, "failed": failed, "stages": results}


def verification_error(data: dict[str, Any]) -> NoetherError | None:
    """The error `stage verify` reports alongside its data when a stage failed."""
    if not data["failed"]:
        return None
    return NoetherError("verification_failed", f"{data['failed']} of {data['total']} stage(s) failed verification")
