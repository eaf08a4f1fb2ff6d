"""Pre-flight checks (each with its own error code), run after type checking:
effect policy, capability policy, signatures, static budget, isolation.
"""

from __future__ import annotations

import msgspec

from noether_nix.errors import NoetherError
from noether_nix.graph.ast import ConstNode, Node, RemoteStageNode, StageNode, walk
from noether_nix.graph.resolve import Resolution
from noether_nix.model.effects import EffectKind, EffectSet, Fallible, Network
from noether_nix.model.signing import SignatureStatus, public_key_hex, stdlib_key, verify_id
from noether_nix.model.stage import CAPABILITIES, Stage

STDLIB_PUBLIC_KEY = public_key_hex(stdlib_key())
# Effects that need no sandbox wall: nothing outside the process is touched.
_IN_PROCESS_OK = {EffectKind.PURE, EffectKind.FALLIBLE, EffectKind.COST}
# Stdlib stages the engine answers from its own state (key-value table, store, traces).
ENGINE_STAGES = frozenset(
    {"kv_set", "kv_get", "kv_delete", "kv_exists", "kv_list", "store_search", "stage_describe",
     "type_check", "composition_verify", "trace_read", "store_add"}
)


class PolicyOptions(msgspec.Struct, kw_only=True):
    #: None = every effect allowed; otherwise the allowed kinds. Pure is always
    #: allowed, so an empty list means "nothing but Pure".
    allow_effects: list[str] | None = None
    #: None = every capability allowed; otherwise the allowed ones.
    allow_capabilities: list[str] | None = None
    budget_cents: int | None = None
    allow_unsigned: bool = False
    isolation_available: bool = True


def is_stdlib(stage: Stage) -> bool:
    return stage.signer_public_key == STDLIB_PUBLIC_KEY and stage.implementation_code is None


def needs_sandbox(stage: Stage) -> bool:
    """Whether running this stage needs an isolation backend.

    Only stdlib stages without effects beyond Pure/Fallible/Cost run
    in-process, plus the stdlib stages the engine answers from its own
    state; every stage with code runs in a sandbox, whatever it declares.
    """
    if stage.implementation_code is not None:
        return True
    if is_stdlib(stage):
        if stage.name in ENGINE_STAGES:
            return False
        return not all(k in _IN_PROCESS_OK for k in stage.effects.kinds())
    return True


def parse_effect_tokens(tokens: list[str]) -> set[EffectKind]:
    out = {EffectKind.PURE}
    for t in tokens:
        if t.strip() and t.strip().lower() != "none":
            out.add(EffectKind.parse(t))
    return out


def parse_capability_tokens(tokens: list[str]) -> set[str]:
    names = {c.lower(): c for c in CAPABILITIES}
    names.update({"fs-read": "FsRead", "fs-write": "FsWrite"})
    out = set()
    for t in tokens:
        key = t.strip().lower()
        if not key or key == "none":
            continue
        if key not in names:
            raise NoetherError(
                "unknown_capability",
                f"unknown capability {t.strip()!r} (known: network, fs-read, fs-write, gpu, llm, process)",
                exit_code=2,
            )
        out.add(names[key])
    return out


def stage_occurrences(root: Node, res: Resolution) -> list[tuple[str, Stage]]:
    return [(p, res.stage_for(n)) for p, n in walk(root) if isinstance(n, StageNode)]


def graph_effects(root: Node, res: Resolution) -> EffectSet:
    """The union of every node's effects (both Branch arms included); Const is Pure."""
    out = EffectSet.of([])
    for _, node in walk(root):
        if isinstance(node, ConstNode):
            out = out.union(EffectSet.pure())
        elif isinstance(node, StageNode):
            out = out.union(res.stage_for(node).effects)
        elif isinstance(node, RemoteStageNode):
            out = out.union(EffectSet.of([Fallible(), Network()]))
    return out if out.effects else EffectSet.pure()


def static_cost(root: Node, res: Resolution) -> int:
    return sum(stage.effects.cost_cents() for _, stage in stage_occurrences(root, res))


def run_preflight(root: Node, res: Resolution, opts: PolicyOptions) -> None:
    occurrences = stage_occurrences(root, res)
    if opts.allow_effects is not None:
        allowed = parse_effect_tokens(opts.allow_effects)
        for path, stage in occurrences:
            for k in stage.effects.kinds():
                if k not in allowed:
                    raise NoetherError(
                        "effect_not_allowed",
                        f"stage {stage.label()} declares effect {k}; grant it with --allow-effects {k}",
                        path=path,
                        exit_code=2,
                    )
        for path, node in walk(root):
            if isinstance(node, RemoteStageNode):
                for k in (EffectKind.NETWORK, EffectKind.FALLIBLE):
                    if k not in allowed:
                        raise NoetherError(
                            "effect_not_allowed",
                            f"RemoteStage {node.url} has implicit effect {k}; grant it with --allow-effects {k}",
                            path=path,
                            exit_code=2,
                        )
    if opts.allow_capabilities is not None:
        caps = parse_capability_tokens(opts.allow_capabilities)
        for path, stage in occurrences:
            for c in stage.capabilities:
                if c not in caps:
                    raise NoetherError(
                        "capability_not_granted",
                        f"stage {stage.label()} requires capability {c} which is not granted "
                        f"(--allow-capabilities {c.lower()})",
                        path=path,
                        exit_code=2,
                    )
    if not opts.allow_unsigned:
        for path, stage in occurrences:
            status = verify_id(stage.id, stage.ed25519_signature, stage.signer_public_key)
            if status is not SignatureStatus.VALID:
                text = {
                    SignatureStatus.UNSIGNED: "is not signed",
                    SignatureStatus.BAD_SIGNATURE: "has a signature that does not verify",
                    SignatureStatus.MALFORMED: "has a malformed signature",
                }[status]
                raise NoetherError(
                    f"signature_{status.value}",
                    f"stage {stage.label()} {text}",
                    path=path,
                    hint="re-add it with `noether stage add`, or pass --allow-unsigned",
                    exit_code=2,
                )
    if opts.budget_cents is not None:
        total = static_cost(root, res)
        if total > opts.budget_cents:
            raise NoetherError(
                "budget_exceeded",
                f"declared cost of every stage occurrence is {total}¢, over the {opts.budget_cents}¢ budget",
                path="root",
                exit_code=2,
                details={"expected_cents": total, "budget_cents": opts.budget_cents},
            )
    if not opts.isolation_available:
        for path, stage in occurrences:
            if needs_sandbox(stage):
                raise NoetherError(
                    "isolation_required",
                    f"stage {stage.label()} needs a sandbox (effects: {', '.join(stage.effects.display())}) "
                    "but no isolation backend is available",
                    path=path,
                    hint="install bubblewrap (see `noether doctor`); --isolate none runs it unconfined "
                    "and is not recommended",
                    exit_code=2,
                )
