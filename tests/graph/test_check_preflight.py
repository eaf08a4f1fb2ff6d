"""Each checker error kind and each pre-flight failure, with its exact message."""

from __future__ import annotations

from typing import Any

import pytest

from noether_nix.errors import NoetherError
from noether_nix.graph.check import CheckOptions, check_report, prepare
from noether_nix.store.stages import StageStore
from tests.graph.conftest import AddStage


def g(root: Any) -> dict[str, Any]:
    return {"description": "t", "version": "1", "root": root}


def S(ref: str, **kw: Any) -> dict[str, Any]:
    return {"op": "Stage", "id": ref, **kw}


def seq(*nodes: Any) -> dict[str, Any]:
    return {"op": "Sequential", "stages": list(nodes)}


def fail(store: StageStore, root: Any, **opts: Any) -> NoetherError:
    with pytest.raises(NoetherError) as ei:
        prepare(g(root), store=store, options=CheckOptions(**opts))
    return ei.value


@pytest.fixture
def stages(add_stage: AddStage) -> None:
    add_stage("to_num", "Text", "Number")
    add_stage("num_to_text", "Number", "Text")
    add_stage("is_big", "Number", "Bool")
    add_stage("maybe", "Number", "Number", effects=["Fallible"])
    add_stage("now", "Number", "Number", effects=["NonDeterministic"])
    add_stage("fetch", "Text", "Text", effects=["Network", "Fallible"], capabilities=["Network"])
    add_stage("paid", "Number", "Number", effects=[{"effect": "Cost", "cents": 7}])
    add_stage("unsigned", "Number", "Number", sign=False)
    add_stage("greet", {"Record": [["name", "Text"]]}, "Text")


pytestmark = pytest.mark.usefixtures("stages")


def test_sequential_mismatch(store: StageStore) -> None:
    e = fail(store, seq(S("to_num"), S("to_num")))
    assert e.code == "type_mismatch"
    assert e.path == "root.stages[1]"
    assert e.message == "type mismatch at position 0: output Number is not subtype of input Text: expected Text, got Number"


def test_every_error_is_reported(store: StageStore) -> None:
    e = fail(store, seq(S("to_num"), S("to_num"), S("num_to_text"), S("num_to_text")))
    assert e.message.endswith("(and 1 more)")
    assert [x["node_path"] for x in e.details["errors"]] == ["root.stages[1]", "root.stages[3]"]


def test_branch_predicate_must_be_bool(store: StageStore) -> None:
    e = fail(store, {"op": "Branch", "predicate": S("num_to_text"), "if_true": S("maybe"), "if_false": S("maybe")})
    assert e.code == "branch_predicate_not_bool"
    assert e.message == "branch predicate must produce Bool, got Text"


def test_fanout_target_mismatch(store: StageStore) -> None:
    e = fail(store, {"op": "Fanout", "source": S("to_num"), "targets": [S("num_to_text"), S("to_num")]})
    assert e.path == "root.targets[1]"
    assert e.message.startswith("fanout target 1: output Number is not subtype of input Text")


def test_merge_mismatch(store: StageStore) -> None:
    e = fail(store, {"op": "Merge", "sources": [S("to_num")], "target": S("greet")})
    assert e.message == ("merge: output Record { source_0: Number } is not subtype of input "
                         "Record { name: Text }: missing required field `name`")


def test_empty_nodes(store: StageStore) -> None:
    assert fail(store, seq()).message == "empty Sequential node"
    assert fail(store, {"op": "Parallel", "branches": {}}).message == "empty Parallel node"


def test_unification_failure_names_both_types(store: StageStore) -> None:
    # head: List<T> → T, then T must be Text (to_num) and the list holds Numbers.
    e = fail(store, seq(S("paid"), S("head")))
    assert e.code == "unification_failed"
    assert "cannot unify Number with List<<T#" in e.message


def test_identity_at_two_types_in_one_graph(store: StageStore) -> None:
    p = prepare(g(seq(S("to_num"), S("identity"), S("num_to_text"), S("identity"), S("to_num"))),
                store=store, options=CheckOptions())
    report = check_report(p)
    assert report["type_check"] == {"input": "Text", "output": "Number"}


def test_config_removes_supplied_fields(store: StageStore) -> None:
    p = prepare(g(S("text_template", config={"template": "Hi {{name}}"})), store=store, options=CheckOptions())
    assert check_report(p)["type_check"]["input"] == "Any"


def test_warnings(store: StageStore) -> None:
    p = prepare(g(seq(S("maybe"), S("now"), S("num_to_text"))), store=store, options=CheckOptions())
    codes = {w.code for w in p.warnings}
    assert "fallible_without_retry" in codes
    assert "nondeterministic_feeding_pure" in codes


def test_effect_policy(store: StageStore) -> None:
    e = fail(store, S("fetch"), allow_effects=[])
    assert e.code == "effect_not_allowed" and e.exit_code == 2
    assert e.message.startswith("stage fetch (") and e.message.endswith(
        "declares effect fallible; grant it with --allow-effects fallible")
    # Pure needs no grant: "nothing but Pure" is the empty list.
    prepare(g(S("to_num")), store=store, options=CheckOptions(allow_effects=[]))
    prepare(g(S("fetch")), store=store, options=CheckOptions(allow_effects=["network", "fallible"]))


def test_unknown_effect_token_is_an_error(store: StageStore) -> None:
    e = fail(store, S("to_num"), allow_effects=["netwrok"])
    assert e.code == "unknown_effect"


def test_capability_policy(store: StageStore) -> None:
    e = fail(store, S("fetch"), allow_capabilities=["fs-read"])
    assert e.code == "capability_not_granted"
    assert "requires capability Network which is not granted (--allow-capabilities network)" in e.message


def test_signature_policy(store: StageStore) -> None:
    e = fail(store, S("unsigned"))
    assert e.code == "signature_unsigned"
    assert e.message.endswith("is not signed")
    prepare(g(S("unsigned")), store=store, options=CheckOptions(allow_unsigned=True))


def test_static_budget_counts_every_occurrence(store: StageStore) -> None:
    root = {"op": "Branch", "predicate": S("is_big"), "if_true": S("paid"), "if_false": S("paid")}
    e = fail(store, root, budget_cents=10)
    assert e.code == "budget_exceeded"
    assert e.message == "declared cost of every stage occurrence is 14¢, over the 10¢ budget"
    assert prepare(g(root), store=store, options=CheckOptions(budget_cents=14)).expected_cost_cents == 14


def test_isolation_requirement(store: StageStore) -> None:
    e = fail(store, seq(S("text_upper"), S("to_num")), isolation_available=False)
    assert e.code == "isolation_required"
    assert e.path == "root.stages[1]"
    # In-process stdlib stages plan fine without a sandbox.
    prepare(g(S("text_upper")), store=store, options=CheckOptions(isolation_available=False))


def test_dead_branch_elimination_and_report(store: StageStore) -> None:
    root = seq(seq(S("to_num")), {"op": "Branch", "predicate": {"op": "Const", "value": True},
                                  "if_true": S("paid"), "if_false": S("maybe")})
    p = prepare(g(root), store=store, options=CheckOptions())
    r = check_report(p)
    assert r["optimizer"]["passes_applied"] == ["canonical_structural", "dead_branch_elimination"]
    assert r["plan"]["steps"] == 2
    off = prepare(g(root), store=store, options=CheckOptions(optimize=False))
    assert check_report(off)["plan"]["steps"] == 3
    assert p.composition_id == off.composition_id


def test_let_binding_mismatch(store: StageStore) -> None:
    root = {"op": "Let", "bindings": {"name": S("to_num")}, "body": S("greet")}
    e = fail(store, root)
    assert e.path == "root.bindings.name"
    assert e.message == ('let binding "name": output Number is not subtype of input Text: '
                         "expected Text, got Number")


def test_let_input_collects_what_bindings_and_body_need(store: StageStore) -> None:
    root = {"op": "Let", "bindings": {"name": S("num_to_text")}, "body": S("greet")}
    p = prepare(g(root), store=store, options=CheckOptions())
    assert check_report(p)["type_check"] == {"input": "Any", "output": "Text"}
