"""The execution plan summary: steps, concurrent groups and widest fan-out."""

from __future__ import annotations

import msgspec

from noether_nix.graph.ast import (
    FanoutNode,
    LetNode,
    Node,
    ParallelNode,
    RemoteStageNode,
    StageNode,
    walk,
)


class PlanSummary(msgspec.Struct):
    steps: int
    parallel_groups: int
    max_width: int


def plan(root: Node) -> PlanSummary:
    steps = groups = 0
    width = 1
    for _, node in walk(root):
        if isinstance(node, (StageNode, RemoteStageNode)):
            steps += 1
        elif isinstance(node, ParallelNode) and len(node.branches) > 1:
            groups += 1
            width = max(width, len(node.branches))
        elif isinstance(node, LetNode) and len(node.bindings) > 1:
            groups += 1
            width = max(width, len(node.bindings))
        elif isinstance(node, FanoutNode) and len(node.targets) > 1:
            groups += 1
            width = max(width, len(node.targets))
    return PlanSummary(steps, groups, width)
