"""Pre-flight checks (each with its own error code), run after type checking:
effect policy, capability policy, signatures, static budget, isolation.
"""

from __future__ import annotations

import msgspec

from noether_nix.errors import NoetherError
from noether_nix.graph.ast import (
    ConstNode,
    Node,
    RemoteStageNode,
    RetryNode,
    StageNode,
    children,
)
from noether_nix.graph.resolve import Resolution
from noether_nix.model.effects import Effect, EffectKind, EffectSet, Fallible, Network, Pure
from noether_nix.model.signing import STDLIB_PUBLIC_KEY, SignatureStatus, verify_id
from noether_nix.model.stage import CAPABILITIES, LANGUAGES, Stage
from noether_nix.stdlib.registry import STDLIB

# What a RemoteStage implies (spec §2.4).
REMOTE_EFFECTS = EffectSet.of([Fallible(), Network()])


class PolicyOptions(msgspec.Struct, kw_only=True):
    #: None = every effect allowed; otherwise the allowed kinds as
    #: ``--allow-effects`` tokens. Pure is always allowed, so ``[]``,
    #: ``["pure"]`` and ``["none"]`` all mean "nothing but Pure" (upstream
    #: cannot express that: its empty list allows everything, §13.12).
    allow_effects: list[str] | None = None
    #: None = every capability allowed; otherwise the allowed ones
    #: (``[]`` or ``["none"]``: none).
    allow_capabilities: list[str] | None = None
    budget_cents: int | None = None
    allow_unsigned: bool = False
    isolation_available: bool = True


def is_stdlib(stage: Stage) -> bool:
    return stage.signer_public_key == STDLIB_PUBLIC_KEY and stage.implementation_code is None


def needs_sandbox(stage: Stage) -> bool:
    """Whether running this stage needs an isolation backend.

    Stdlib stages go by their registry entry (``stdlib.registry.STDLIB``),
    which the engine's dispatch reads too, not by their effects: upstream's
    ``write_file`` declares only Fallible although it writes files. Every
    stage with code runs in a sandbox, whatever it declares.
    """
    if stage.implementation_code is not None:
        return True
    if is_stdlib(stage):
        entry = STDLIB.get(stage.name or "")
        return entry is None or entry.sandboxed
    return True


def unrunnable_language(stage: Stage) -> str | None:
    """The language of a stage's code when this engine cannot run it (upstream's Rust stages), else None."""
    lang = stage.implementation_language
    if stage.implementation_code is not None and lang is not None and lang not in LANGUAGES:
        return lang
    return None


def check_runnable(stage: Stage, path: str) -> None:
    """Refuse, before anything runs, a stage whose code is in a language this engine stores but cannot run."""
    lang = unrunnable_language(stage)
    if lang is not None:
        raise NoetherError(
            "language_not_runnable",
            f"stage {stage.label()} is written in {lang.capitalize()}, which noether-nix stores but cannot run "
            f"(it runs {', '.join(LANGUAGES)})",
            path=path,
            hint="upstream builds such stages for the browser (`noether build --target browser`); to run this "
                 "graph here, give the stage a Python, JavaScript or Bash implementation",
            exit_code=2,
        )


def parse_effect_tokens(tokens: list[str]) -> set[EffectKind]:
    out = {EffectKind.PURE}
    for t in tokens:
        if t.strip() and t.strip().lower() != "none":
            try:
                out.add(EffectKind.parse(t))
            except NoetherError as e:
                raise NoetherError(e.code, e.message, path="--allow-effects", exit_code=2) from None
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
                path="--allow-capabilities",
                exit_code=2,
            )
        out.add(names[key])
    return out


#: Every node with its path, as :func:`walk` lists them. The passes below
#: take it ready-made so one graph is walked once, not once per check.
Nodes = list[tuple[str, Node]]


def stage_occurrences(nodes: Nodes, res: Resolution) -> list[tuple[str, Stage]]:
    return [(p, res.stage_for(n)) for p, n in nodes if isinstance(n, StageNode)]


def graph_effects(nodes: Nodes, res: Resolution) -> EffectSet:
    """The union of every node's effects (both Branch arms included); Const is Pure."""
    sets: dict[str, EffectSet] = {}  # distinct stages: their sets are unioned once
    found: list[Effect] = []
    for _, node in nodes:
        if isinstance(node, ConstNode):
            found.append(Pure())
        elif isinstance(node, StageNode):
            stage = res.stage_for(node)
            sets[stage.id] = stage.effects
        elif isinstance(node, RemoteStageNode):
            found.extend(REMOTE_EFFECTS.effects)
    for es in sets.values():
        found.extend(es.effects)
    return EffectSet.of(found) if found else EffectSet.pure()


def static_cost(nodes: Nodes, res: Resolution) -> int:
    """Upstream's static pre-flight figure: declared cents summed over every
    Stage occurrence (both Branch arms, each Fanout target, once each)."""
    return sum(stage.effects.cost_cents() for _, stage in stage_occurrences(nodes, res))


def worst_case_cost(root: Node, res: Resolution) -> int:
    """The static cost if every Retry uses all its attempts (each attempt is
    charged at runtime); nested Retries multiply."""
    total = 0
    stack: list[tuple[Node, int]] = [(root, 1)]
    while stack:
        node, factor = stack.pop()
        if isinstance(node, StageNode):
            total += factor * res.stage_for(node).effects.cost_cents()
        elif isinstance(node, RetryNode):
            stack.append((node.stage, factor * max(1, node.max_attempts)))
        else:
            stack.extend((child, factor) for _, child in children(node, ""))
    return total


def validate_options(opts: PolicyOptions) -> None:
    """Refuse unknown policy tokens before any graph work, naming the flag."""
    if opts.allow_effects is not None:
        parse_effect_tokens(opts.allow_effects)
    if opts.allow_capabilities is not None:
        parse_capability_tokens(opts.allow_capabilities)
    if opts.budget_cents is not None and opts.budget_cents < 0:
        raise NoetherError("invalid_budget", "the budget must be 0 cents or more", path="--budget-cents",
                           exit_code=2)


def check_stage_policy(
    stage: Stage,
    path: str,
    opts: PolicyOptions,
    *,
    allowed: set[EffectKind] | None = None,
    caps: set[str] | None = None,
    verified: set[str] | None = None,
    isolation: bool = True,
) -> None:
    """One stage against the policy: effects, capabilities, signature and
    (with ``isolation``) whether it can be sandboxed here. Used for every
    stage of a graph before it runs, and by the engine for the stages a
    higher-order stage (map, retry, race, …) names at run time."""
    check_runnable(stage, path)
    if allowed is None and opts.allow_effects is not None:
        allowed = parse_effect_tokens(opts.allow_effects)
    if caps is None and opts.allow_capabilities is not None:
        caps = parse_capability_tokens(opts.allow_capabilities)
    if allowed is not None:
        for k in stage.effects.kinds():
            if k not in allowed:
                raise NoetherError(
                    "effect_not_allowed",
                    f"stage {stage.label()} declares effect {k}; grant it with --allow-effects {k}",
                    path=path,
                    exit_code=2,
                )
    if caps is not None:
        for c in stage.capabilities:
            if c not in caps:
                raise NoetherError(
                    "capability_not_granted",
                    f"stage {stage.label()} requires capability {c} which is not granted "
                    f"(--allow-capabilities {c.lower()})",
                    path=path,
                    exit_code=2,
                )
    if not opts.allow_unsigned and (verified is None or stage.id not in verified):
        if verified is not None:
            verified.add(stage.id)
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
    if isolation and not opts.isolation_available and needs_sandbox(stage):
        raise NoetherError(
            "isolation_required",
            f"stage {stage.label()} needs a sandbox (effects: {', '.join(stage.effects.display())}) but no "
            "isolation backend is available",
            path=path,
            hint="install bubblewrap (see `noether doctor`); --isolate none runs it unconfined and is not recommended",
            exit_code=2,
        )


def run_preflight(nodes: Nodes, res: Resolution, opts: PolicyOptions) -> None:
    """Effect policy, capability policy, signatures, static budget, isolation;
    the first failure is raised, each kind with its own code (exit 2)."""
    occurrences = stage_occurrences(nodes, res)
    allowed = parse_effect_tokens(opts.allow_effects) if opts.allow_effects is not None else None
    caps = parse_capability_tokens(opts.allow_capabilities) if opts.allow_capabilities is not None else None
    verified: set[str] = set()  # Ed25519 verification is the costly part: once per stage
    for path, stage in occurrences:
        check_stage_policy(stage, path, opts, allowed=allowed, caps=caps, verified=verified, isolation=False)
    if allowed is not None:
        for path, node in nodes:
            if isinstance(node, RemoteStageNode):
                for k in REMOTE_EFFECTS.kinds():
                    if k not in allowed:
                        raise NoetherError(
                            "effect_not_allowed",
                            f"RemoteStage {node.url} has implicit effect {k}; grant it with --allow-effects {k}",
                            path=path,
                            exit_code=2,
                        )
    if opts.budget_cents is not None:
        total = static_cost(nodes, res)
        if total > opts.budget_cents:
            raise NoetherError(
                "budget_exceeded",
                f"declared cost of every stage occurrence is {total}¢, over the {opts.budget_cents}¢ budget",
                path="root",
                exit_code=2,
                details={"expected_cents": total, "budget_cents": opts.budget_cents},
            )
    if not opts.isolation_available:
        for path, node in nodes:
            if isinstance(node, StageNode) and needs_sandbox(stage := res.stage_for(node)):
                who, effects = f"stage {stage.label()}", stage.effects.display()
            elif isinstance(node, RemoteStageNode):
                # The call is made from a networked sandbox, never by the daemon.
                who, effects = f"RemoteStage {node.url}", REMOTE_EFFECTS.display()
            else:
                continue
            raise NoetherError(
                "isolation_required",
                f"{who} needs a sandbox (effects: {', '.join(effects)}) but no isolation backend is available",
                path=path,
                hint="install bubblewrap (see `noether doctor`); --isolate none runs it unconfined "
                "and is not recommended",
                exit_code=2,
            )
