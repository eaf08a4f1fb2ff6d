"""Composition IDs reproduce the spec vectors; canonicalisation laws hold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from noether_nix.graph.ast import node_to_json, parse_graph, parse_node
from noether_nix.graph.canonical import canonical_bytes, canonicalise, composition_id
from noether_nix.graph.optimize import optimize

SPEC = Path(__file__).resolve().parents[3] / "shared" / "spec"
VECTORS: list[dict[str, Any]] = json.loads((SPEC / "vectors.json").read_text())["composition_ids"]


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vectors(v: dict[str, Any]) -> None:
    root = parse_node(v["root"])
    assert canonical_bytes(root).decode() == v["canonical_jcs"]
    assert composition_id(root) == v["composition_id"]


def stage(i: str) -> dict[str, Any]:
    return {"op": "Stage", "id": i}


stage_ids = st.sampled_from(["a", "b", "c", "d"]).map(stage)
json_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3),
                           lambda c: st.lists(c, max_size=2) | st.dictionaries(st.text(max_size=2), c, max_size=2),
                           max_leaves=4)
leaves = (
    stage_ids
    | st.builds(lambda i, p, c: {"op": "Stage", "id": i, "pinning": p, "config": c, "_note": "ignored"},
                st.sampled_from(["a", "b"]), st.sampled_from(["signature", "both"]),
                st.none() | st.dictionaries(st.sampled_from(["k", "n"]), json_values, max_size=2))
    | json_values.map(lambda v: {"op": "Const", "value": v})
    | st.sampled_from(["Text", "Number", {"List": "Text"}]).map(
        lambda t: {"op": "RemoteStage", "url": "http://h/", "input": t, "output": "Bool"})
)


def _compound(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    names = st.sampled_from(["x", "y", "z"])
    return (
        st.lists(children, min_size=0, max_size=3).map(lambda ss: {"op": "Sequential", "stages": ss})
        | st.dictionaries(names, children, min_size=1, max_size=3).map(lambda b: {"op": "Parallel", "branches": b})
        | st.builds(lambda s, n, d: {"op": "Retry", "stage": s, "max_attempts": n, "delay_ms": d},
                    children, st.integers(0, 4), st.sampled_from([None, 100]))
        | st.builds(lambda b, body: {"op": "Let", "bindings": b, "body": body},
                    st.dictionaries(names, children, max_size=2), children)
        | st.builds(lambda s, ts: {"op": "Fanout", "source": s, "targets": ts}, children,
                    st.lists(children, min_size=1, max_size=2))
        | st.builds(lambda p, t, f: {"op": "Branch", "predicate": p, "if_true": t, "if_false": f},
                    children, children, children)
        | st.builds(lambda ss, t: {"op": "Merge", "sources": ss, "target": t}, st.lists(children, max_size=2),
                    children)
    )


graphs = st.recursive(leaves, _compound, max_leaves=8)


def cid(raw: Any) -> str:
    return composition_id(parse_node(raw))


@given(graphs, graphs, graphs)
def test_sequential_is_associative(a: Any, b: Any, c: Any) -> None:
    left = {"op": "Sequential", "stages": [{"op": "Sequential", "stages": [a, b]}, c]}
    right = {"op": "Sequential", "stages": [a, {"op": "Sequential", "stages": [b, c]}]}
    assert cid(left) == cid(right) == cid({"op": "Sequential", "stages": [a, b, c]})


@given(graphs)
def test_singleton_sequential_collapses(a: Any) -> None:
    assert cid({"op": "Sequential", "stages": [a]}) == cid(a)


@given(st.dictionaries(st.sampled_from(["p", "q", "r"]), graphs, min_size=1, max_size=3))
def test_parallel_and_let_key_order_do_not_matter(branches: dict[str, Any]) -> None:
    rev = dict(reversed(list(branches.items())))
    assert cid({"op": "Parallel", "branches": branches}) == cid({"op": "Parallel", "branches": rev})
    body = stage("a")
    assert cid({"op": "Let", "bindings": branches, "body": body}) == cid({"op": "Let", "bindings": rev, "body": body})


@given(graphs, st.integers(2, 50), st.integers(2, 50), st.sampled_from([None, 0, 100]))
def test_retry_collapse_and_multiplication(a: Any, n: int, m: int, d: Any) -> None:
    nested = {"op": "Retry", "stage": {"op": "Retry", "stage": a, "max_attempts": n, "delay_ms": d},
              "max_attempts": m, "delay_ms": d}
    flat_inner = canonicalise(parse_node(a))
    # Multiplication applies only when the inner node is not itself a Retry with the same delay.
    if node_to_json(flat_inner)["op"] != "Retry":
        assert cid(nested) == cid({"op": "Retry", "stage": a, "max_attempts": n * m, "delay_ms": d})
    assert cid({"op": "Retry", "stage": a, "max_attempts": 1, "delay_ms": d}) == cid(a)
    assert cid({"op": "Retry", "stage": a, "max_attempts": 0, "delay_ms": d}) == cid(a)


@given(graphs)
def test_empty_let_collapses(a: Any) -> None:
    assert cid({"op": "Let", "bindings": {}, "body": a}) == cid(a)


@given(graphs)
def test_canonicalisation_is_idempotent(a: Any) -> None:
    once = canonicalise(parse_node(a))
    assert canonicalise(once) == once


def test_retry_with_different_delays_keeps_nesting() -> None:
    nested = {"op": "Retry", "stage": {"op": "Retry", "stage": stage("a"), "max_attempts": 3, "delay_ms": 100},
              "max_attempts": 4, "delay_ms": 200}
    assert json.loads(canonical_bytes(parse_node(nested)))["stage"]["op"] == "Retry"


def test_unknown_node_fields_are_ignored() -> None:
    assert cid({"op": "Stage", "id": "abc", "_comment": "x"}) == cid({"op": "Stage", "id": "abc"})


@given(graphs)
def test_wire_form_round_trips(a: Any) -> None:
    node = parse_node(a)
    assert parse_node(node_to_json(node)) == node


@given(graphs, st.text(max_size=5), st.text(max_size=5))
def test_only_the_root_is_hashed(a: Any, description: str, version: str) -> None:
    g = parse_graph({"description": description, "version": version, "root": a, "ui": {"x": 1}})
    assert composition_id(g.root) == cid(a)


@given(graphs)
def test_optimiser_reaches_a_canonical_fixpoint(a: Any) -> None:
    out, report = optimize(parse_node(a))
    assert not report.hit_cap
    assert canonicalise(out) == out
    assert optimize(out)[0] == out


def test_dead_branch_elimination_only_trusts_a_literal_bool() -> None:
    def branch(v: Any) -> Any:
        return parse_node({"op": "Branch", "predicate": {"op": "Const", "value": v}, "if_true": stage("t"),
                           "if_false": stage("f")})

    assert optimize(branch(True))[0] == parse_node(stage("t"))
    assert optimize(branch(False))[0] == parse_node(stage("f"))
    # 1 == True in Python, but only a JSON true selects if_true at runtime: leave it alone.
    assert optimize(branch(1))[0] == branch(1)
