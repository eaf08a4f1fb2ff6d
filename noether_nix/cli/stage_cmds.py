"""``noether stage …``: add, get, list, lifecycle changes, verify."""

from __future__ import annotations

import argparse
from typing import Any

import msgspec

from noether_nix.cli.common import open_store, read_json_file
from noether_nix.errors import NoetherError
from noether_nix.model.signing import (
    SignatureStatus,
    load_or_create_author_key,
    public_key_hex,
    sign_id,
    verify_id,
)
from noether_nix.model.stage import Stage, stage_from_spec, stage_to_json
from noether_nix.model.types import display
from noether_nix.paths import noether_home
from noether_nix.store.stages import StageStore


def register(sub: Any) -> None:
    stage = sub.add_parser("stage", help="manage stages").add_subparsers(dest="stage_cmd", required=True)

    p = stage.add_parser("add", help="add a stage from a spec file")
    p.add_argument("spec")
    p.add_argument("--draft", action="store_true", help="keep it a Draft instead of activating it")
    p.add_argument("--no-build", action="store_true", help="do not build the stage's Nix program now")
    p.set_defaults(handler=cmd_add, command="stage add")

    p = stage.add_parser("get", help="show a stage")
    p.add_argument("ref")
    p.set_defaults(handler=cmd_get, command="stage get")

    p = stage.add_parser("list", help="list stages")
    p.add_argument("--lifecycle", default="active",
                   choices=["draft", "active", "deprecated", "tombstone", "all"])
    p.add_argument("--tag", action="append", default=[])
    p.add_argument("--full-ids", action="store_true")
    p.set_defaults(handler=cmd_list, command="stage list")

    for name, to in (("activate", "Active"), ("tombstone", "Tombstone")):
        p = stage.add_parser(name, help=f"move a stage to {to}")
        p.add_argument("ref")
        p.set_defaults(handler=_transition(to), command=f"stage {name}")
    p = stage.add_parser("deprecate", help="deprecate a stage in favour of a successor")
    p.add_argument("ref")
    p.add_argument("--successor", required=True)
    p.set_defaults(handler=_transition("Deprecated"), command="stage deprecate")

    p = stage.add_parser("verify", help="check hashes, signatures, examples and properties")
    p.add_argument("ref", nargs="?")
    p.set_defaults(handler=cmd_verify, command="stage verify")


def sign_for_store(stage: Stage) -> Stage:
    """Keep a valid embedded signature; sign an unsigned stage with the author key."""
    status = verify_id(stage.id, stage.ed25519_signature, stage.signer_public_key)
    if status is SignatureStatus.VALID:
        return stage
    if status is SignatureStatus.UNSIGNED:
        key = load_or_create_author_key(noether_home())
        return msgspec.structs.replace(
            stage, ed25519_signature=sign_id(key, stage.id), signer_public_key=public_key_hex(key)
        )
    what = "does not verify" if status is SignatureStatus.BAD_SIGNATURE else "is malformed"
    raise NoetherError(
        f"signature_{status.value}",
        f"the stage's embedded signature {what}",
        path="ed25519_signature",
        hint="remove both ed25519_signature and signer_public_key to sign with your author key",
        exit_code=2,
    )


def cmd_add(args: argparse.Namespace) -> Any:
    doc = read_json_file(args.spec, what="spec file")
    stage = sign_for_store(stage_from_spec(doc, path=args.spec))
    store = open_store()
    if store.get(stage.id) is not None:
        existing = store.get(stage.id)
        assert existing is not None
        return {"id": stage.id, "lifecycle": existing.state.lower(), "note": "already exists"}
    res = store.add(stage, activate=not args.draft and stage.state in ("Draft", "Active"))
    out: dict[str, Any] = {"id": res.id, "lifecycle": res.lifecycle.lower()}
    if res.supersedes:
        out["supersedes"] = res.supersedes
    if stage.implementation_code and stage.implementation_language and not args.no_build:
        out["program"] = _build_now(store, stage)
    return out


def _build_now(store: StageStore, stage: Stage) -> dict[str, Any]:
    """Build the new stage's program right away, so its first run does not wait.

    A build failure does not undo the add: the stage is stored, and the
    failure is reported here and again, with its cause, on first use.
    """
    from noether_nix.nix.programs import build_stage_program
    from noether_nix.nix.registry import ProgramRegistry

    try:
        prog = build_stage_program(stage.id, stage.implementation_language or "", stage.implementation_code or "",
                                   registry=ProgramRegistry(store.conn))
    except NoetherError as e:
        return {"built": False, "error": e.to_dict()}
    return {"built": True, "store_path": prog.store_path, "build_ms": prog.build_ms}


def cmd_get(args: argparse.Namespace) -> Any:
    return stage_to_json(open_store().resolve(args.ref))


def signature_text(stage: Stage) -> str:
    return f"{display(stage.input)} → {display(stage.output)}"


def cmd_list(args: argparse.Namespace) -> Any:
    stages = open_store().all()
    if args.lifecycle != "all":
        stages = [s for s in stages if s.state.lower() == args.lifecycle]
    for tag in args.tag:
        stages = [s for s in stages if tag in s.tags]
    stages.sort(key=lambda s: (s.description, s.id))
    rows = []
    for s in stages:
        row: dict[str, Any] = {
            "id": s.id if args.full_ids else s.id[:8],
            "name": s.name,
            "description": s.description,
            "signature": signature_text(s),
            "effects": s.effects.display(),
            "lifecycle": s.state,
        }
        if s.tags:
            row["tags"] = s.tags
        rows.append(row)
    return {"stages": rows, "count": len(rows)}


def _transition(to: str) -> Any:
    def handler(args: argparse.Namespace) -> Any:
        store = open_store()
        stage = store.resolve(args.ref)
        successor = store.resolve(args.successor).id if to == "Deprecated" else None
        deprecated = store.transition(stage.id, to, successor_id=successor)  # type: ignore[arg-type]
        out: dict[str, Any] = {"id": stage.id, "lifecycle": to.lower()}
        if successor:
            out["successor_id"] = successor
        if deprecated:
            out["supersedes"] = deprecated
        if to == "Tombstone":
            _release_program(stage.id)
        return out

    return handler


def _release_program(stage_id: str) -> None:
    # A tombstoned stage's Nix program may be garbage-collected.
    try:
        from noether_nix.nix.registry import ProgramRegistry
    except ImportError:
        return
    ProgramRegistry(StageStore().path).release(stage_id)


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


def cmd_verify(args: argparse.Namespace) -> Any:
    from noether_nix.cli.envelope import CommandResult

    store = open_store()
    stages = [store.resolve(args.ref)] if args.ref else store.all()
    results = [verify_stage(s) for s in stages]
    failed = sum(1 for r in results if r["status"] == "failed")
    data = {"total": len(results), "passed": len(results) - failed, "failed": failed, "stages": results}
    err = None
    if failed:
        err = NoetherError("verification_failed", f"{failed} of {len(results)} stage(s) failed verification")
    return CommandResult(data, err)
