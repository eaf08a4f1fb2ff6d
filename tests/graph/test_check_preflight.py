"""Each checker error kind and each pre-flight failure, with its exact message."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from noether_nix.errors import NoetherError
from noether_nix.graph.ast import parse_node
from noether_nix.graph.canonical import composition_id
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
    # Both stages are named, not just the position.
    to_num = label(store, "to_num")
    assert e.message == (f"type mismatch at position 0: stage {to_num} outputs Number, but stage {to_num} takes Text: "
                         "expected Text, got Number")
    e = fail(store, seq(S("num_to_text"), seq(S("to_num"), S("greet"))))
    assert e.path == "root.stages[1].stages[1]"
    assert e.message == (f"type mismatch at position 0: stage {to_num} outputs Number, but stage "
                         f"{label(store, 'greet')} takes Record {{ name: Text }}: expected Record {{ name: Text }}, "
                         "got Number")


def test_every_error_is_reported(store: StageStore) -> None:
    e = fail(store, seq(S("to_num"), S("to_num"), S("num_to_text"), S("num_to_text")))
    assert e.message.endswith("(and 1 more)")
    assert [x["node_path"] for x in e.details["errors"]] == ["root.stages[1]", "root.stages[3]"]


def test_branch_predicate_must_be_bool(store: StageStore) -> None:
    e = fail(store, {"op": "Branch", "predicate": S("num_to_text"), "if_true": S("maybe"), "if_false": S("maybe")})
    assert e.code == "branch_predicate_not_bool"
    assert e.path == "root.predicate"
    assert e.message == "branch predicate must produce Bool, got Text"


def test_fanout_target_mismatch(store: StageStore) -> None:
    e = fail(store, {"op": "Fanout", "source": S("to_num"), "targets": [S("num_to_text"), S("to_num")]})
    assert e.path == "root.targets[1]"
    to_num = label(store, "to_num")
    assert e.message == (f"fanout target 1: the source, stage {to_num}, outputs Number, but the target, stage "
                         f"{to_num}, takes Text: expected Text, got Number")


def test_merge_mismatch(store: StageStore) -> None:
    e = fail(store, {"op": "Merge", "sources": [S("to_num")], "target": S("greet")})
    assert e.message == ("merge: the sources give Record { source_0: Number }, but the target, stage "
                         f"{label(store, 'greet')}, takes Record {{ name: Text }}: missing required field `name`")


def test_empty_nodes(store: StageStore) -> None:
    assert fail(store, seq()).message == "empty Sequential node"
    assert fail(store, {"op": "Parallel", "branches": {}}).message == "empty Parallel node"
    assert fail(store, {"op": "Fanout", "source": S("to_num"), "targets": []}).message == "empty Fanout node"
    assert fail(store, {"op": "Merge", "sources": [], "target": S("to_num")}).message == "empty Merge node"
    e = fail(store, {"op": "Let", "bindings": {}, "body": S("to_num")})
    assert (e.code, e.path, e.message) == ("empty_node", "root", "empty Let node")


def test_unification_failure_names_both_types(store: StageStore) -> None:
    # head: List<T> → T, then T must be Text (to_num) and the list holds Numbers.
    e = fail(store, seq(S("paid"), S("head")))
    assert e.code == "unification_failed"
    assert e.path == "root.stages[1]"
    assert e.message == (f"type-variable unification failed at sequential position 0 (stage {label(store, 'paid')} "
                         f"→ stage {label(store, 'head')}): cannot unify Number with List<<T#2>>: Number vs List<<T#2>>")


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


def label(store: StageStore, name: str) -> str:
    return store.by_name(name)[0].label()


def test_branch_arms_must_accept_the_branch_input(store: StageStore) -> None:
    # Both arms run on the branch's own input, which the predicate fixes as Number.
    e = fail(store, {"op": "Branch", "predicate": S("is_big"), "if_true": S("maybe"), "if_false": S("to_num")})
    assert (e.code, e.path) == ("type_mismatch", "root.if_false")
    assert e.message == ("branch if_false: branch input Number (what predicate takes) is not subtype of "
                         "if_false input Text: expected Text, got Number")


def test_branch_input_is_the_most_specific_part(store: StageStore) -> None:
    root = {"op": "Branch", "predicate": {"op": "Const", "value": True}, "if_true": S("to_num"),
            "if_false": S("to_num")}
    report = check_report(prepare(g(root), store=store, options=CheckOptions(optimize=False)))
    assert report["type_check"] == {"input": "Text", "output": "Number"}


def test_let_body_must_take_a_record(store: StageStore) -> None:
    e = fail(store, {"op": "Let", "bindings": {"n": S("to_num")}, "body": S("to_num")})
    assert (e.code, e.path) == ("type_mismatch", "root.body")
    assert e.message == ("let body: it receives the record Record { n: Number } but its input is Text: "
                         "expected Text, got Record { n: Number }")


def test_config_values_are_checked_against_the_fields_they_supply(store: StageStore) -> None:
    e = fail(store, S("text_template", config={"template": 42}))
    assert (e.code, e.path) == ("config_type_mismatch", "root.config.template")
    assert e.message == (f"config of stage {label(store, 'text_template')} does not fit its input: "
                         "config.template: expected Text, got number")


def test_unbound_type_variables_keep_their_stage_names(store: StageStore) -> None:
    one = check_report(prepare(g(S("identity")), store=store, options=CheckOptions()))
    assert one["type_check"] == {"input": "<T>", "output": "<T>"}
    # Two unrelated variables must not look like one.
    two = prepare(g({"op": "Parallel", "branches": {"a": S("identity"), "b": S("identity")}}), store=store,
                  options=CheckOptions())
    assert check_report(two)["type_check"]["output"] == "Record { a: <T#1>, b: <T#2> }"


def test_a_bound_variable_allows_width_subtyping(store: StageStore, add_stage: AddStage) -> None:
    add_stage("person", "Text", {"Record": [["name", "Text"], ["age", "Number"]]})
    p = prepare(g(seq(S("person"), S("identity"), S("greet"))), store=store, options=CheckOptions())
    assert check_report(p)["type_check"] == {"input": "Text", "output": "Text"}


def test_warning_messages(store: StageStore) -> None:
    p = prepare(g(seq(S("maybe"), S("now"), S("num_to_text"))), store=store, options=CheckOptions())
    assert [msgspec.to_builtins(w) for w in p.warnings] == [
        {"code": "fallible_without_retry",
         "message": f"stage {label(store, 'maybe')} is Fallible but has no Retry wrapper; failures will propagate",
         "node_path": "root.stages[0]"},
        {"code": "nondeterministic_feeding_pure",
         "message": f"non-deterministic stage {label(store, 'now')} feeds pure stage "
                    f"{label(store, 'num_to_text')}; its cached results depend on a value that changes between runs",
         "node_path": "root.stages[1]"},
    ]


def test_fallible_warning_looks_through_nesting_and_retry(store: StageStore) -> None:
    nested = {"op": "Parallel", "branches": {"a": S("maybe")}}
    assert [w.node_path for w in prepare(g(nested), store=store, options=CheckOptions()).warnings] == [
        "root.branches.a"]
    retried = {"op": "Retry", "stage": seq(S("maybe"), S("maybe")), "max_attempts": 3}
    assert prepare(g(retried), store=store, options=CheckOptions()).warnings == []
    # One attempt is no retry.
    once = {"op": "Retry", "stage": S("maybe"), "max_attempts": 1}
    assert [w.code for w in prepare(g(once), store=store, options=CheckOptions()).warnings] == [
        "fallible_without_retry"]


def test_retries_that_may_overrun_the_budget_warn(store: StageStore) -> None:
    root = {"op": "Retry", "stage": S("paid"), "max_attempts": 3}
    p = prepare(g(root), store=store, options=CheckOptions(budget_cents=10))
    assert p.expected_cost_cents == 7
    assert [msgspec.to_builtins(w) for w in p.warnings] == [{
        "code": "cost_may_exceed_budget",
        "message": "estimated composition cost with every Retry attempt used (21¢) exceeds budget (10¢)",
        "node_path": "root"}]
    assert prepare(g(root), store=store, options=CheckOptions(budget_cents=21)).warnings == []


def test_effect_policy_messages(store: StageStore) -> None:
    e = fail(store, S("fetch"), allow_effects=["network"])
    assert (e.code, e.path, e.exit_code) == ("effect_not_allowed", "root", 2)
    assert e.message == f"stage {label(store, 'fetch')} declares effect fallible; grant it with --allow-effects fallible"
    remote = {"op": "RemoteStage", "url": "http://127.0.0.1:9/", "input": "Text", "output": "Text"}
    e = fail(store, remote, allow_effects=["pure"])
    assert e.message == ("RemoteStage http://127.0.0.1:9/ has implicit effect fallible; grant it with "
                         "--allow-effects fallible")
    # "nothing but Pure" has three spellings; all refuse the stage and accept a pure one.
    for tokens in ([], ["pure"], ["none"]):
        assert fail(store, S("now"), allow_effects=tokens).code == "effect_not_allowed"
        prepare(g(S("to_num")), store=store, options=CheckOptions(allow_effects=tokens))


def test_policy_tokens_are_checked_before_the_graph(store: StageStore) -> None:
    e = fail(store, S("no_such_stage"), allow_effects=["netwrok"])
    assert (e.code, e.path, e.exit_code) == ("unknown_effect", "--allow-effects", 2)
    assert e.message.startswith("unknown effect kind 'netwrok' (known: cost, fallible, fs-read, ")
    e = fail(store, S("to_num"), allow_capabilities=["teleport"])
    assert (e.code, e.path) == ("unknown_capability", "--allow-capabilities")
    assert e.message == "unknown capability 'teleport' (known: network, fs-read, fs-write, gpu, llm, process)"
    e = fail(store, S("to_num"), budget_cents=-1)
    assert (e.code, e.message) == ("invalid_budget", "the budget must be 0 cents or more")


def test_capability_message(store: StageStore) -> None:
    e = fail(store, seq(S("to_num"), S("num_to_text"), S("fetch")), allow_capabilities=[])
    assert (e.code, e.path) == ("capability_not_granted", "root.stages[2]")
    assert e.message == (f"stage {label(store, 'fetch')} requires capability Network which is not granted "
                         "(--allow-capabilities network)")


@pytest.mark.parametrize(("sign", "code", "text"), [
    (False, "signature_unsigned", "is not signed"),
    ("bad", "signature_bad_signature", "has a signature that does not verify"),
    ("malformed", "signature_malformed", "has a malformed signature"),
])
def test_signature_messages(store: StageStore, add_stage: AddStage, sign: Any, code: str, text: str) -> None:
    stage = add_stage("suspect", "Number", "Number", sign=sign)
    e = fail(store, seq(S("to_num"), S("suspect")))
    assert (e.code, e.path, e.exit_code) == (code, "root.stages[1]", 2)
    assert e.message == f"stage {stage.label()} {text}"
    assert e.hint == "re-add it with `noether stage add`, or pass --allow-unsigned"
    prepare(g(S("suspect")), store=store, options=CheckOptions(allow_unsigned=True))


def test_isolation_messages(store: StageStore) -> None:
    e = fail(store, S("fetch"), isolation_available=False)
    assert e.message == (f"stage {label(store, 'fetch')} needs a sandbox (effects: fallible, network) but no "
                         "isolation backend is available")
    assert e.hint is not None and "--isolate none" in e.hint and "not recommended" in e.hint
    remote = {"op": "RemoteStage", "url": "http://127.0.0.1:9/", "input": "Text", "output": "Text"}
    e = fail(store, remote, isolation_available=False)
    assert (e.code, e.path) == ("isolation_required", "root")
    assert e.message == ("RemoteStage http://127.0.0.1:9/ needs a sandbox (effects: fallible, network) but no "
                         "isolation backend is available")


def test_check_report_shape(store: StageStore) -> None:
    root = {"op": "Parallel", "branches": {"a": S("paid"), "b": seq(S("to_num"), S("now"))}}
    r = check_report(prepare(g(root), store=store, options=CheckOptions()))
    assert r["composition_id"] == composition_id(parse_node(root))
    assert r["type_check"] == {"input": "Record { a: Number, b: Text }", "output": "Record { a: Number, b: Number }"}
    assert r["effects"] == ["cost", "non-deterministic", "pure"]
    assert r["plan"] == {"steps": 3, "parallel_groups": 1, "max_width": 2}
    assert r["expected_cost_cents"] == 7
