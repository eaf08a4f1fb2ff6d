"""``prepare``: parse → composition ID → resolve → type-check → pre-flight
→ optimise → plan. One call for the CLI, the engine and the daemon."""

from __future__ import annotations

from typing import Any

import msgspec

from noether_nix.errors import NoetherError
from noether_nix.graph.ast import Graph, Node, parse_graph, walk
from noether_nix.graph.canonical import composition_id
from noether_nix.graph.checker import check_types, raise_type_errors
from noether_nix.graph.optimize import OptimizeReport, optimize
from noether_nix.graph.plan import PlanSummary, plan
from noether_nix.graph.preflight import (
    PolicyOptions,
    graph_effects,
    run_preflight,
    static_cost,
    validate_options,
    worst_case_cost,
)
from noether_nix.graph.resolve import Resolution, Warning_, resolve_graph
from noether_nix.model.effects import EffectSet
from noether_nix.model.types import NType, display
from noether_nix.model.values import conforms
from noether_nix.store.stages import StageStore


class CheckOptions(PolicyOptions, kw_only=True):
    optimize: bool = True


class PreparedGraph(msgspec.Struct):
    graph: Graph
    composition_id: str
    root: Node  # optimised when enabled; execution runs this
    resolution: Resolution
    input: NType
    output: NType
    effects: EffectSet
    warnings: list[Warning_]
    optimizer: OptimizeReport
    plan: PlanSummary
    expected_cost_cents: int


def prepare(raw: Any, *, store: StageStore, options: CheckOptions, input: Any = None,
            check_input: bool = False) -> PreparedGraph:
    validate_options(options)
    graph = parse_graph(raw)
    cid = composition_id(graph.root)
    nodes = walk(graph.root)
    resolution = resolve_graph(graph.root, store, nodes=nodes)
    types = check_types(graph.root, resolution)
    raise_type_errors(types)
    if check_input:
        err = conforms(input, types.input, "input")
        if err:
            raise NoetherError("input_type_mismatch", f"the input does not match the graph's input type "
                               f"{display(types.input)}: {err}", path="input", exit_code=2)
    run_preflight(nodes, resolution, options)
    warnings = [*resolution.warnings, *types.warnings]
    cost = static_cost(nodes, resolution)
    if options.budget_cents is not None:
        # The static sum fits (pre-flight passed); retries may still overrun at runtime.
        worst = worst_case_cost(graph.root, resolution)
        if worst > options.budget_cents:
            warnings.append(Warning_("cost_may_exceed_budget",
                                     f"estimated composition cost with every Retry attempt used ({worst}¢) "
                                     f"exceeds budget ({options.budget_cents}¢)", "root"))
    if options.optimize:
        root, report = optimize(graph.root)
    else:
        root, report = graph.root, OptimizeReport([], 0, False)
    return PreparedGraph(
        graph=graph,
        composition_id=cid,
        root=root,
        resolution=resolution,
        input=types.input,
        output=types.output,
        effects=graph_effects(nodes, resolution),
        warnings=warnings,
        optimizer=report,
        plan=plan(root),
        expected_cost_cents=cost,
    )


def check_report(p: PreparedGraph) -> dict[str, Any]:
    """The ``data`` of ``noether check`` / ``run --dry-run``."""
    return {
        "mode": "dry-run",
        "composition_id": p.composition_id,
        "description": p.graph.description,
        "type_check": {"input": display(p.input), "output": display(p.output)},
        "effects": p.effects.display(),
        "warnings": [msgspec.to_builtins(w) for w in p.warnings],
        "optimizer": msgspec.to_builtins(p.optimizer),
        "plan": msgspec.to_builtins(p.plan),
        "expected_cost_cents": p.expected_cost_cents,
        "stages": sorted({s.id: s.label() for s in p.resolution.stages.values()}.values()),
    }
