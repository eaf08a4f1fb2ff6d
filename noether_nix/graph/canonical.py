"""Canonical form and composition ID (spec §4.4).

The ID is computed on the graph as parsed, before resolution and
optimisation: ``sha256(JCS(serde(canonicalise(root))))``.
"""

from __future__ import annotations

from noether_nix.graph.ast import (
    BranchNode,
    FanoutNode,
    LetNode,
    MergeNode,
    Node,
    ParallelNode,
    RetryNode,
    SequentialNode,
    node_to_json,
)
from noether_nix.model.jcs import jcs, sha256_hex

_U32_MAX = 2**32 - 1


def canonicalise(node: Node) -> Node:
    """Bottom-up: children first, then the node-local rules."""
    match node:
        case SequentialNode(stages=ss):
            flat: list[Node] = []
            for s in ss:
                c = canonicalise(s)
                if isinstance(c, SequentialNode):
                    flat.extend(c.stages)
                else:
                    flat.append(c)
            return flat[0] if len(flat) == 1 else SequentialNode(flat)
        case ParallelNode(branches=bs):
            return ParallelNode({k: canonicalise(v) for k, v in bs.items()})
        case BranchNode(predicate=p, if_true=t, if_false=f):
            return BranchNode(canonicalise(p), canonicalise(t), canonicalise(f))
        case FanoutNode(source=s, targets=ts):
            return FanoutNode(canonicalise(s), [canonicalise(t) for t in ts])
        case MergeNode(sources=ss, target=t):
            return MergeNode([canonicalise(s) for s in ss], canonicalise(t))
        case RetryNode(stage=s, max_attempts=n, delay_ms=d):
            return _retry(canonicalise(s), n, d)
        case LetNode(bindings=bs, body=b):
            if not bs:
                return canonicalise(b)
            return LetNode({k: canonicalise(v) for k, v in bs.items()}, canonicalise(b))
    return node


def _retry(inner: Node, n: int, delay: int | None) -> Node:
    if n <= 1:
        return inner
    if isinstance(inner, RetryNode) and inner.delay_ms == delay:
        return _retry(inner.stage, min(inner.max_attempts * n, _U32_MAX), delay)
    return RetryNode(inner, n, delay)


def canonical_bytes(root: Node) -> bytes:
    return jcs(node_to_json(canonicalise(root)))


def composition_id(root: Node) -> str:
    return sha256_hex(canonical_bytes(root))
