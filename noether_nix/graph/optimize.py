"""Graph optimisation: canonical-structural rewrite and dead-branch
elimination, iterated to a fixpoint (at most 16 rounds)."""

from __future__ import annotations

import msgspec

from noether_nix.graph.ast import (
    BranchNode,
    ConstNode,
    FanoutNode,
    LetNode,
    MergeNode,
    Node,
    ParallelNode,
    RetryNode,
    SequentialNode,
)
from noether_nix.graph.canonical import canonicalise

MAX_ITERATIONS = 16


class OptimizeReport(msgspec.Struct):
    passes_applied: list[str]
    iterations: int
    hit_cap: bool


def eliminate_dead_branches(node: Node) -> Node:
    match node:
        case BranchNode(predicate=ConstNode(value=True), if_true=t):
            return eliminate_dead_branches(t)
        case BranchNode(predicate=ConstNode(value=False), if_false=f):
            return eliminate_dead_branches(f)
        case BranchNode(predicate=p, if_true=t, if_false=f):
            return BranchNode(eliminate_dead_branches(p), eliminate_dead_branches(t), eliminate_dead_branches(f))
        case SequentialNode(stages=ss):
            return SequentialNode([eliminate_dead_branches(s) for s in ss])
        case ParallelNode(branches=bs):
            return ParallelNode({k: eliminate_dead_branches(v) for k, v in bs.items()})
        case FanoutNode(source=s, targets=ts):
            return FanoutNode(eliminate_dead_branches(s), [eliminate_dead_branches(t) for t in ts])
        case MergeNode(sources=ss, target=t):
            return MergeNode([eliminate_dead_branches(s) for s in ss], eliminate_dead_branches(t))
        case RetryNode(stage=s, max_attempts=n, delay_ms=d):
            return RetryNode(eliminate_dead_branches(s), n, d)
        case LetNode(bindings=bs, body=b):
            return LetNode({k: eliminate_dead_branches(v) for k, v in bs.items()}, eliminate_dead_branches(b))
    return node


PASSES = (("canonical_structural", canonicalise), ("dead_branch_elimination", eliminate_dead_branches))


def optimize(root: Node) -> tuple[Node, OptimizeReport]:
    applied: list[str] = []
    for i in range(1, MAX_ITERATIONS + 1):
        changed = False
        for name, fn in PASSES:
            new = fn(root)
            if new != root:
                changed = True
                if name not in applied:
                    applied.append(name)
                root = new
        if not changed:
            return root, OptimizeReport(applied, i, False)
    return root, OptimizeReport(applied, MAX_ITERATIONS, True)
