"""Parsing errors name their JSON path; references resolve in the documented order."""

from __future__ import annotations

from typing import Any

import pytest

from noether_nix.errors import NoetherError
from noether_nix.graph.ast import (
    MAX_DEPTH,
    ConstNode,
    ParallelNode,
    SequentialNode,
    StageNode,
    parse_graph,
)
from noether_nix.graph.canonical import composition_id
from noether_nix.graph.resolve import resolve_graph
from noether_nix.model.identity import legacy_v0_id
from noether_nix.store.stages import StageStore
from tests.graph.conftest import AddStage


def graph(root: Any) -> dict[str, Any]:
    return {"description": "t", "version": "1", "root": root, "ui": {"ignored": True}}


def test_all_ten_operators_parse() -> None:
    root = {"op": "Sequential", "stages": [
        {"op": "Stage", "id": "a", "pinning": "both", "config": {"n": 1}},
        {"op": "RemoteStage", "url": "http://127.0.0.1:1/", "input": "Text", "output": {"List": "Number"}},
        {"op": "Const", "value": [1, "x"]},
        {"op": "Parallel", "branches": {"x": {"op": "Stage", "id": "a"}}},
        {"op": "Branch", "predicate": {"op": "Const", "value": True}, "if_true": {"op": "Stage", "id": "a"},
         "if_false": {"op": "Stage", "id": "b"}},
        {"op": "Fanout", "source": {"op": "Stage", "id": "a"}, "targets": [{"op": "Stage", "id": "b"}]},
        {"op": "Merge", "sources": [{"op": "Stage", "id": "a"}], "target": {"op": "Stage", "id": "b"}},
        {"op": "Retry", "stage": {"op": "Stage", "id": "a"}, "max_attempts": 3, "delay_ms": 10},
        {"op": "Let", "bindings": {"y": {"op": "Stage", "id": "a"}}, "body": {"op": "Stage", "id": "b"}},
    ]}
    g = parse_graph(graph(root))
    assert isinstance(g.root, SequentialNode) and len(g.root.stages) == 9
    first = g.root.stages[0]
    assert isinstance(first, StageNode) and first.pinning == "both" and first.config == {"n": 1}
    assert isinstance(g.root.stages[3], ParallelNode)


@pytest.mark.parametrize(
    ("root", "path", "message"),
    [
        ({"op": "Sequential", "stages": [{"op": "Stage", "id": "a"}, {"op": "Stage", "id": "b"},
                                         {"op": "Parallel", "branches": {"a": {"id": "x"}}}]},
         "root.stages[2].branches.a", 'missing "op"'),
        ({"op": "Teleport"}, "root.op", "unknown op 'Teleport'"),
        ({"op": "Retry", "stage": {"op": "Stage", "id": "a"}, "max_attempts": -1}, "root.max_attempts",
         "whole number"),
        ({"op": "Stage", "id": "a", "pinning": "exact"}, "root.pinning", '"signature" or "both"'),
        ({"op": "Fanout", "source": {"op": "Stage", "id": "a"}}, "root", 'missing "targets"'),
        ({"op": "Sequential", "stages": {"a": 1}}, "root.stages", "array of nodes"),
        ({"op": "RemoteStage", "url": "u", "input": "Txt", "output": "Text"}, "root.input", "unknown type kind"),
    ],
)
def test_malformed_graphs_name_the_path(root: Any, path: str, message: str) -> None:
    with pytest.raises(NoetherError) as ei:
        parse_graph(graph(root))
    assert ei.value.path == path
    assert message in ei.value.message
    assert str(ei.value).startswith(f"{path}: ")


def test_graph_needs_root() -> None:
    with pytest.raises(NoetherError) as ei:
        parse_graph({"description": "x", "version": "1"})
    assert ei.value.message == 'missing "root"'


def _resolve(store: StageStore, ref: str, pinning: str = "signature") -> Any:
    root = parse_graph(graph({"op": "Stage", "id": ref, "pinning": pinning})).root
    return resolve_graph(root, store)


def test_resolution_order(store: StageStore, add_stage: AddStage) -> None:
    s = add_stage("thing", "Text", "Text", body="return input")
    assert _resolve(store, s.id).stages[(s.id, "signature")].id == s.id
    assert _resolve(store, s.id[:10]).stages[(s.id[:10], "signature")].id == s.id
    assert _resolve(store, s.signature_id or "").stages[(s.signature_id, "signature")].id == s.id
    assert _resolve(store, "thing").stages[("thing", "signature")].id == s.id
    sig = s.signature
    legacy = legacy_v0_id(sig.input, sig.output, sig.effects, sig.implementation_hash)
    res = _resolve(store, legacy[:8])
    assert res.stages[(legacy[:8], "signature")].id == s.id
    assert [w.code for w in res.warnings] == ["legacy_id"]


def test_signature_id_follows_the_active_implementation(store: StageStore, add_stage: AddStage) -> None:
    old = add_stage("thing", "Text", "Text", body="return input")
    new = add_stage("thing", "Text", "Text", body="return input + ''")
    assert old.signature_id == new.signature_id
    assert _resolve(store, old.signature_id or "").stages[(old.signature_id, "signature")].id == new.id


def test_deprecated_stage_is_followed_with_a_warning(store: StageStore, add_stage: AddStage) -> None:
    old = add_stage("thing", "Text", "Text", body="return input")
    new = add_stage("thing", "Text", "Text", body="return input + ''")
    res = _resolve(store, old.id)
    assert res.stages[(old.id, "signature")].id == new.id
    assert res.warnings[0].code == "deprecated_followed"
    pinned = _resolve(store, old.id, "both")
    assert pinned.stages[(old.id, "both")].id == old.id
    assert pinned.warnings[0].code == "deprecated_pinned"


def test_upstream_legacy_id_of_text_template_resolves(store: StageStore) -> None:
    res = _resolve(store, "b4dfc6b0")
    assert res.stages[("b4dfc6b0", "signature")].name == "text_template"


@pytest.mark.parametrize(
    ("setup", "ref", "code"),
    [
        ("none", "nosuchstage", "stage_not_found"),
        ("tombstone", "thing", "stage_not_found"),
        ("tombstone_id", None, "stage_tombstoned"),
        ("both_on_signature", None, "pinning_needs_stage_id"),
    ],
)
def test_resolution_errors(store: StageStore, add_stage: AddStage, setup: str, ref: str | None, code: str) -> None:
    s = add_stage("thing", "Text", "Text")
    pinning = "signature"
    if setup.startswith("tombstone"):
        store.transition(s.id, "Tombstone")
    if setup == "tombstone_id":
        ref = s.id
    if setup == "both_on_signature":
        ref, pinning = s.signature_id, "both"
    with pytest.raises(NoetherError) as ei:
        _resolve(store, ref or "", pinning)
    assert ei.value.code == code
    assert ei.value.path == "root"


def test_ambiguous_prefix_lists_candidates(store: StageStore, add_stage: AddStage) -> None:
    stages = [add_stage(f"s{i}", body=f"return {i}") for i in range(40)]
    firsts = [s.id[0] for s in stages]
    dup = next(c for c in firsts if firsts.count(c) > 1)
    # Stdlib ids share the hex space, so count every stage with that prefix.
    expected = len(store.by_prefix(dup))
    with pytest.raises(NoetherError) as ei:
        _resolve(store, dup)
    assert ei.value.code == "ambiguous_reference"
    assert len(ei.value.details["candidates"]) == expected


def _nest(depth: int) -> Any:
    node: Any = {"op": "Stage", "id": "a"}
    for _ in range(depth - 1):
        node = {"op": "Retry", "stage": node, "max_attempts": 2}
    return node


def test_nesting_is_bounded_with_a_named_error() -> None:
    parse_graph(graph(_nest(MAX_DEPTH)))
    with pytest.raises(NoetherError) as ei:
        parse_graph(graph(_nest(MAX_DEPTH + 1)))
    assert ei.value.code == "graph_too_deep"
    assert ei.value.message == "nodes nested deeper than 128 levels"
    assert ei.value.path == "root" + ".stage" * MAX_DEPTH
    # A hostile Const value is refused before any recursive pass sees it.
    value: Any = 1
    for _ in range(100_000):
        value = [value]
    with pytest.raises(NoetherError) as ei:
        parse_graph(graph({"op": "Const", "value": value}))
    assert (ei.value.code, ei.value.path) == ("graph_too_deep", "root.value")


def test_const_values_are_never_rewritten() -> None:
    # Looks like a RemoteStage with shorthand types, but it is data.
    data = {"op": "RemoteStage", "url": "u", "input": "Text", "output": "Text"}
    g = parse_graph(graph({"op": "Const", "value": data}))
    assert isinstance(g.root, ConstNode) and g.root.value == data


def test_remote_stage_type_shorthand_becomes_the_wire_form() -> None:
    short = parse_graph(graph({"op": "RemoteStage", "url": "u", "input": "Text", "output": {"List": "Number"}}))
    wire = parse_graph(graph({"op": "RemoteStage", "url": "u", "input": {"kind": "Text"},
                              "output": {"kind": "List", "value": {"kind": "Number"}}}))
    assert short.root == wire.root
    assert composition_id(short.root) == composition_id(wire.root)


def test_a_hex_name_that_is_also_an_id_prefix_is_ambiguous(store: StageStore, add_stage: AddStage) -> None:
    other = add_stage("other", body="return 1")
    prefix = other.id[:6]
    named = add_stage(prefix, body="return 2")
    with pytest.raises(NoetherError) as ei:
        _resolve(store, prefix)
    assert ei.value.code == "ambiguous_reference"
    assert ei.value.message == (f"stage reference {prefix!r} is an id prefix of {other.label()} and the name of "
                                f"{named.label()}")
    assert ei.value.hint == "write the full id of the stage you mean"


@pytest.mark.parametrize(("raw", "says"), [
    ({"op": "Stage", "id": "a", "pining": "both"},
     "root: unknown field `pining` in Stage node; did you mean `pinning`?"),
    # Upstream's docs/concepts.md spells Retry's delay `backoff_ms`; its code (and ours) reads delay_ms.
    ({"op": "Retry", "stage": {"op": "Stage", "id": "a"}, "max_attempts": 2, "backoff_ms": 5},
     "root: unknown field `backoff_ms` in Retry node; did you mean `delay_ms`?"),
    ({"op": "Sequential", "stages": [{"op": "Const", "value": 1, "vale": 2}]},
     "root.stages[0]: unknown field `vale` in Const node; did you mean `value`?"),
    ({"op": "Parallel", "branches": {"a": {"op": "Stage", "id": "a", "confg": {}}}},
     "root.branches.a: unknown field `confg` in Stage node; did you mean `config`?"),
])
def test_unknown_node_fields_are_errors_with_a_suggestion(raw: Any, says: str) -> None:
    with pytest.raises(NoetherError) as ei:
        parse_graph(graph(raw))
    assert ei.value.code == "invalid_graph"
    assert str(ei.value) == says


def test_unknown_graph_fields_are_errors_but_comments_and_ui_are_not() -> None:
    with pytest.raises(NoetherError) as ei:
        parse_graph({"description": "t", "version": "1", "rot": {"op": "Const", "value": 1}, "root": {}})
    assert str(ei.value) == "graph: unknown field `rot` in graph file; did you mean `root`?"
    # The shapes of upstream's example graphs: `_comment` on nodes, `ui` beside the root.
    g = parse_graph({"description": "t", "version": "0.1.0", "ui": {"atoms": {}}, "_note": "x",
                     "root": {"op": "Sequential", "stages": [
                         {"op": "RemoteStage", "url": "http://localhost:8080", "input": "Any", "output": "Any",
                          "_comment": "backend"},
                         {"op": "Stage", "id": "4d76a323", "_comment": "ui stage"}]}})
    assert isinstance(g.root, SequentialNode) and len(g.root.stages) == 2


def test_unknown_run_options_are_errors_with_a_suggestion() -> None:
    from noether_nix.engine.options import decode_options

    with pytest.raises(NoetherError) as ei:
        decode_options({"budget_cent": 5})
    assert ei.value.code == "usage" and ei.value.exit_code == 2
    assert str(ei.value) == "options: unknown field `budget_cent` in run options; did you mean `budget_cents`?"
    assert decode_options({"_comment": "x", "budget_cents": 5}).budget_cents == 5
