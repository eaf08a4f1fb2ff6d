"""``noether store …``: import / export upstream's store.json, stats."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from noether_nix.cli.common import open_store, read_json_file
from noether_nix.errors import NoetherError
from noether_nix.model.signing import SignatureStatus, verify_id
from noether_nix.model.stage import Stage, check_identity, stage_from_json


def register(sub: Any) -> None:
    store = sub.add_parser("store", help="the stage store").add_subparsers(dest="store_cmd", required=True)
    p = store.add_parser("import", help="import an upstream store.json ({\"stages\": [...]})")
    p.add_argument("file")
    p.set_defaults(handler=cmd_import, command="store import")
    p = store.add_parser("export", help="export the store as upstream store.json")
    p.add_argument("--output", "-o", help="write store.json to this file instead of the envelope")
    p.set_defaults(handler=cmd_export, command="store export")
    p = store.add_parser("stats", help="counts by lifecycle")
    p.set_defaults(handler=cmd_stats, command="store stats")


def cmd_import(args: argparse.Namespace) -> Any:
    doc = read_json_file(args.file, what="store file")
    if not isinstance(doc, dict) or not isinstance(doc.get("stages"), list):
        raise NoetherError("invalid_store_file", 'expected {"stages": [...]}', path=args.file)
    # Validate everything first: a bad entry leaves the store unchanged.
    stages: list[Stage] = []
    errors: list[dict[str, Any]] = []
    for i, raw in enumerate(doc["stages"]):
        where = f"{args.file}: stages[{i}]"
        try:
            stage = stage_from_json(raw, path=f"stages[{i}]")
            check_identity(stage, path=f"stages[{i}]")
            status = verify_id(stage.id, stage.ed25519_signature, stage.signer_public_key)
            if status in (SignatureStatus.BAD_SIGNATURE, SignatureStatus.MALFORMED):
                raise NoetherError(f"signature_{status.value}", f"signature {status.value}", path=f"stages[{i}]")
            stages.append(stage)
        except NoetherError as e:
            errors.append({"index": i, "error": e.to_dict(), "where": where})
    if errors:
        raise NoetherError(
            "import_failed",
            f"{len(errors)} of {len(doc['stages'])} stage(s) are invalid; nothing was imported",
            path=args.file,
            details={"failed": errors},
        )
    store = open_store()
    imported: list[str] = []
    skipped: list[str] = []
    # Successors first so Deprecated stages never point at a missing stage.
    order = sorted(stages, key=lambda s: s.state == "Deprecated")
    for s in order:
        res = store.add(s)
        (imported if res.created else skipped).append(s.id)
    return {"imported": imported, "skipped": skipped, "counts": {"imported": len(imported), "skipped": len(skipped)}}


def cmd_export(args: argparse.Namespace) -> Any:
    doc = open_store().export()
    if args.output:
        Path(args.output).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        return {"path": args.output, "count": len(doc["stages"])}
    return doc


def cmd_stats(args: argparse.Namespace) -> Any:
    counts = open_store().count()
    return {"total": sum(counts.values()), "by_lifecycle": counts}
