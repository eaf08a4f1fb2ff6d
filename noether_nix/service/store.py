"""``noether store …``: import / export upstream's store.json, stats."""

from __future__ import annotations

from typing import Any

from noether_nix.errors import NoetherError
from noether_nix.model.stage import Stage
from noether_nix.service.context import Context
from noether_nix.service.endpoints import Import, NoParams
from noether_nix.store.upstream import stage_from_store_entry


def import_stages(ctx: Context, p: Import) -> dict[str, Any]:
    """Import a ``{"stages": [...]}`` document; ``source`` names it in errors (the client's file)."""
    store, doc, source = ctx.store, p.doc, p.source
    if not isinstance(doc, dict) or not isinstance(doc.get("stages"), list):
        raise NoetherError("invalid_store_file", 'expected {"stages": [...]}', path=source)
    # Validate everything first: a bad entry leaves the store unchanged.
    stages: list[Stage] = []
    errors: list[dict[str, Any]] = []
    for i, raw in enumerate(doc["stages"]):
        try:
            stages.append(stage_from_store_entry(raw, path=f"stages[{i}]"))
        except NoetherError as e:
            errors.append({"index": i, "error": e.to_dict(), "where": f"{source}: stages[{i}]"})
    if errors:
        raise NoetherError(
            "import_failed",
            f"{len(errors)} of {len(doc['stages'])} stage(s) are invalid; nothing was imported",
            path=source,
            details={"failed": errors},
        )
    imported: list[str] = []
    skipped: list[str] = []
    # Successors first so Deprecated stages never point at a missing stage.
    for s in sorted(stages, key=lambda s: s.state == "Deprecated"):
        res = store.add(s)
        (imported if res.created else skipped).append(s.id)
    return {"imported": imported, "skipped": skipped, "counts": {"imported": len(imported), "skipped": len(skipped)}}


def export_store(ctx: Context, p: NoParams) -> dict[str, Any]:
    """Upstream's store.json document."""
    return ctx.store.export()


def store_stats(ctx: Context, p: NoParams) -> dict[str, Any]:
    counts = ctx.store.count()
    return {"total": sum(counts.values()), "by_lifecycle": counts}
