"""Stage reference resolution (spec §5.3, without upstream's SignatureId bug).

Each ``Stage`` node's ``id`` is resolved, in order, as: full StageId, unique
hex prefix, SignatureId (``signature`` pinning → its Active implementation;
``both`` → only an exact StageId is accepted), legacy v0 ID (or unique
prefix), stage name (Active wins). Deprecated stages are followed to their
successor (at most 10 hops, cycle-safe) with a warning. A reference that is
both a unique id prefix and another stage's name (a hex-only name such as
``cafe``) is refused as ambiguous rather than silently taken as the prefix.
"""

from __future__ import annotations

import msgspec

from noether_nix.errors import NoetherError
from noether_nix.graph.ast import Node, StageNode, walk
from noether_nix.model.stage import Stage
from noether_nix.store.remote import FALLBACK_CODES, StageLookup, remote_source
from noether_nix.store.stages import StageStore
from noether_nix.suggest import did_you_mean

MAX_DEPRECATION_HOPS = 10


class Warning_(msgspec.Struct, frozen=True):
    code: str
    message: str
    node_path: str | None = None


RefKey = tuple[str, str]  # (id as written, pinning)


class Resolution(msgspec.Struct):
    stages: dict[RefKey, Stage]
    warnings: list[Warning_]

    def stage_for(self, node: StageNode) -> Stage:
        return self.stages[(node.id, node.pinning)]


def _err(code: str, message: str, path: str, **kw: object) -> NoetherError:
    return NoetherError(code, message, path=path, exit_code=1, **kw)  # type: ignore[arg-type]


def _ambiguous(ref: str, what: str, found: list[Stage], path: str) -> NoetherError:
    listing = ", ".join(f"{s.id[:12]} ({s.name or s.description}, {s.state})" for s in found[:8])
    return NoetherError(
        "ambiguous_reference",
        f"stage reference {ref!r} matches {len(found)} stages by {what}: {listing}",
        path=path,
        hint="use a longer prefix or the full id",
        exit_code=1,
        details={"candidates": [s.id for s in found]},
    )


def resolve_ref(store: StageStore, ref: str, pinning: str, path: str, warnings: list[Warning_]) -> Stage:
    mark = len(warnings)
    try:
        stage = _lookup(store, ref, pinning, path, warnings)
        return _follow(store, stage, pinning, path, warnings)
    except NoetherError as e:
        source = remote_source()
        if source is None or e.code not in FALLBACK_CODES:
            raise
    # Not (fully) here: the configured registry, with local stages shadowing its own.
    del warnings[mark:]
    view, notes = source.lookup(store, ref)
    warnings.extend(Warning_(code, message, path) for code, message in notes)
    stage = _lookup(view, ref, pinning, path, warnings)
    return _follow(view, stage, pinning, path, warnings, local=None if source.own_lifecycles else store)


def _lookup(store: StageLookup, ref: str, pinning: str, path: str, warnings: list[Warning_]) -> Stage:
    exact = store.get(ref)
    if exact is not None:
        return exact
    by_prefix = store.by_prefix(ref)
    if len(by_prefix) == 1:
        # A name made of hex digits ("cafe") is also an id prefix; silently
        # picking the prefix match would run a stage the author never meant.
        named = [s for s in store.by_name(ref) if s.state != "Tombstone" and s.id != by_prefix[0].id]
        if named:
            raise NoetherError(
                "ambiguous_reference",
                f"stage reference {ref!r} is an id prefix of {by_prefix[0].label()} and the name of "
                f"{named[0].label()}",
                path=path,
                hint="write the full id of the stage you mean",
                exit_code=1,
                details={"candidates": [by_prefix[0].id, *(s.id for s in named)]},
            )
        return by_prefix[0]
    if len(by_prefix) > 1:
        raise _ambiguous(ref, "id prefix", by_prefix, path)
    by_sig = store.by_signature(ref)
    if by_sig:
        if pinning == "both":
            raise _err(
                "pinning_needs_stage_id",
                f"pinning \"both\" needs a StageId, but {ref[:16]}… is a SignatureId",
                path,
                hint='use the implementation\'s StageId, or pinning "signature"',
            )
        active = sorted((s for s in by_sig if s.state == "Active"), key=lambda s: s.id)
        if len(active) > 1:
            warnings.append(Warning_("multiple_active", f"{len(active)} Active stages share signature "
                                     f"{ref[:16]}…; using {active[0].id[:12]}", path))
        if active:
            return active[0]
        # No Active implementation: a deprecated one leads to its successor.
        deprecated = [s for s in by_sig if s.state == "Deprecated"]
        if deprecated:
            return deprecated[0]
        raise _err("signature_not_active", f"no Active stage implements signature {ref[:16]}…", path)
    legacy = store.by_legacy(ref)
    if len(legacy) == 1:
        warnings.append(Warning_("legacy_id", f"{ref!r} is a legacy (v0) id of {legacy[0].label()}", path))
        return legacy[0]
    if len(legacy) > 1:
        raise _ambiguous(ref, "legacy id", legacy, path)
    named = store.by_name(ref)
    active = [s for s in named if s.state == "Active"]
    pick = active or [s for s in named if s.state != "Tombstone"]
    if len(pick) == 1:
        return pick[0]
    if len(pick) > 1:
        raise _ambiguous(ref, "name", pick, path)
    names = getattr(store, "names", None)
    suggestion = did_you_mean(ref, names()) if names is not None else ""
    raise _err("stage_not_found", f"no stage matches {ref!r}{suggestion} (tried id, id prefix, signature id, "
               "legacy id, name)", path)


def _drop_in(old: Stage, new: Stage) -> bool:
    """``new`` can stand in for ``old`` without a user's say-so: the same name,
    types and effects (its SignatureId), signed by the same key (or both unsigned)."""
    return (new.computed_signature_id() == old.computed_signature_id()
            and new.signer_public_key == old.signer_public_key)


def _follow(store: StageLookup, stage: Stage, pinning: str, path: str, warnings: list[Warning_], *,
            local: StageLookup | None = None) -> Stage:
    """``stage``, or the end of its deprecation chain. With ``local`` (resolving
    through a registry): a lifecycle the local store does not hold is the
    registry's word, not part of the stage's id, so a successor it names is
    followed only when it is a drop-in replacement (``_drop_in``); otherwise
    the stage itself runs, with a warning."""
    if stage.state == "Tombstone":
        raise _err("stage_tombstoned", f"stage {stage.label()} is tombstoned and cannot run", path)
    if pinning == "both":
        if stage.state == "Deprecated":
            warnings.append(Warning_("deprecated_pinned", f"stage {stage.label()} is deprecated; running "
                                     "it because pinning is \"both\"", path))
        return stage
    seen = {stage.id}
    start = stage
    hops = 0
    while stage.state == "Deprecated" and stage.successor_id:
        hops += 1
        nxt = store.get(stage.successor_id)
        if nxt is None:
            raise _err("successor_missing", f"stage {stage.label()} is deprecated and its successor "
                       f"{stage.successor_id[:12]} is not in the store", path)
        if local is not None and local.get(stage.id) is None and not _drop_in(stage, nxt):
            warnings.append(Warning_("remote_successor_ignored", f"the registry says stage {stage.label()} is "
                                     f"deprecated in favour of {nxt.label()}, which is not a drop-in replacement "
                                     "(same name, types, effects and signer); running the deprecated stage "
                                     "(name the successor to run it)", path))
            break
        if nxt.id in seen or hops > MAX_DEPRECATION_HOPS:
            raise _err("deprecation_cycle", f"deprecation chain from {start.label()} loops or exceeds "
                       f"{MAX_DEPRECATION_HOPS} hops", path)
        seen.add(nxt.id)
        stage = nxt
    if stage is not start:
        warnings.append(Warning_("deprecated_followed", f"stage {start.label()} is deprecated; using its "
                                 f"successor {stage.label()}", path))
    if stage.state == "Tombstone":
        raise _err("stage_tombstoned", f"stage {stage.label()} is tombstoned and cannot run", path)
    if stage.state == "Draft":
        warnings.append(Warning_("draft_stage", f"stage {stage.label()} is a Draft", path))
    return stage


def resolve_graph(root: Node, store: StageStore, *, nodes: list[tuple[str, Node]] | None = None) -> Resolution:
    """Resolve every Stage reference once (equal references resolve equally).

    ``nodes``: ``walk(root)`` if the caller already has it."""
    res = Resolution({}, [])
    for path, node in nodes if nodes is not None else walk(root):
        if isinstance(node, StageNode):
            key = (node.id, node.pinning)
            if key not in res.stages:
                res.stages[key] = resolve_ref(store, node.id, node.pinning, path, res.warnings)
    return res
