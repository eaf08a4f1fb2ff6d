"""Spec files: what parses, what is refused, and with which message."""

from __future__ import annotations

from typing import Any

import pytest

from noether_nix.errors import NoetherError
from noether_nix.model.effects import Cost, FsRead, Network, Pure
from noether_nix.model.stage import stage_from_json, stage_from_spec, stage_to_json

CODE = "def execute(x):\n    return x + 1\n"


def spec(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": "add1", "input": "Number", "output": "Number", "implementation": CODE}
    doc.update(over)
    return doc


def test_simple_spec_builds_a_draft_with_upstream_ids() -> None:
    s = stage_from_spec(spec())
    assert s.state == "Draft"
    assert s.implementation_language == "python"
    assert s.effects.effects == (Pure(),)
    assert s.id == s.computed_id()
    assert s.description == "add1"


def test_effects_as_names_and_objects() -> None:
    s = stage_from_spec(
        spec(effects=["network", {"effect": "Cost", "cents": 5}, {"effect": "FsRead", "path": "/data/"}])
    )
    assert s.effects.effects == (Cost(cents=5), FsRead(path="/data"), Network())


@pytest.mark.parametrize(
    ("over", "code", "path", "fragment"),
    [
        ({"effects": ["Teleport"]}, "unknown_effect", "spec.effects[0]", "unknown effect 'Teleport'"),
        ({"effects": ["Netwrok"]}, "unknown_effect", "spec.effects[0]", "unknown effect 'Netwrok'; did you mean `Network`?"),
        ({"effects": [{"effect": "FsRead", "path": "data"}]}, "invalid_effect", "spec.effects[0]", "absolute"),
        ({"effects": [{"effect": "FsWrite", "path": "/a/../etc"}]}, "invalid_effect", "spec.effects[0]", "'..'"),
        ({"input": "Txt"}, "invalid_type", "spec.input", "unknown type kind 'Txt'; did you mean `Text`? (known kinds: "
         "Any, Bool, Bytes, List, Map, Null, Number, Record, Stream, Text, Union, VNode, Var, RecordWith, Refined)"),
        ({"output": {"kind": "Lst", "value": "Text"}}, "invalid_type", "spec.output.kind",
         "unknown type kind 'Lst'; did you mean `List`?"),
        ({"input": {"Record": [["n", "Numbr"]]}}, "invalid_type", "spec.input.Record[0][1]",
         "unknown type kind 'Numbr'; did you mean `Number`?"),
        ({"output": {"kind": "Record", "value": {"items": {"List": "Txt"}}}}, "invalid_type",
         "spec.output.value.items.List", "unknown type kind 'Txt'; did you mean `Text`?"),
        ({"implementation": "def run(x):\n    return x\n"}, "missing_execute", "spec.implementation", "def execute(input)"),
        ({"implementation": "def execute(:\n"}, "invalid_implementation", "spec.implementation", "does not parse"),
        ({"language": "cobol"}, "unsupported_language", "spec.language", "'cobol' is not supported"),
        ({"language": "pyhton"}, "unsupported_language", "spec.language",
         "language 'pyhton' is not supported; did you mean `python`?"),
        ({"effect": ["Network"]}, "invalid_spec", "spec", "unknown field `effect` in stage spec; did you mean `effects`?"),
        ({"exmaples": []}, "invalid_spec", "spec", "unknown field `exmaples` in stage spec; did you mean `examples`?"),
        ({"lifecycle": "Drafty"}, "invalid_spec", "spec.lifecycle",
         "unknown lifecycle 'Drafty'; did you mean `Draft`? (a spec may ask for Draft or Active)"),
        ({"examples": [{"input": 1}]}, "invalid_spec", "spec.examples[0]", '"output"'),
        ({"tags": ["ok", 3]}, "invalid_spec", "spec.tags", "array of strings"),
    ],
)
def test_bad_specs_name_the_problem(over: dict[str, Any], code: str, path: str, fragment: str) -> None:
    with pytest.raises(NoetherError) as ei:
        stage_from_spec(spec(**over))
    assert ei.value.code == code
    assert ei.value.path == path
    assert fragment in ei.value.message


def test_async_execute_and_other_languages_accepted() -> None:
    assert stage_from_spec(spec(implementation="async def execute(x):\n    return x\n"))
    js = stage_from_spec(spec(implementation="function execute(x) { return x + 1 }", language="javascript"))
    assert js.implementation_language == "javascript"
    sh = stage_from_spec(spec(implementation={"code": 'execute() { echo "$1"; }', "language": "bash"}))
    assert sh.implementation_language == "bash"


def test_canonical_list_of_primitive_is_not_corrupted() -> None:
    # Upstream's normaliser breaks this (spec §1.2); we accept it.
    s = stage_from_spec(spec(input={"kind": "List", "value": {"kind": "Text"}}))
    assert stage_to_json(s)["signature"]["input"] == {"kind": "List", "value": {"kind": "Text"}}


def test_stored_json_round_trip_keeps_upstream_shape() -> None:
    s = stage_from_spec(spec(tags=["math"]))
    doc = stage_to_json(s)
    assert list(doc)[:3] == ["id", "signature_id", "signature"]
    assert doc["ed25519_signature"] is None and doc["signer_public_key"] is None
    assert "aliases" not in doc and "properties" not in doc
    assert stage_from_json(doc) == s


def test_full_stage_json_with_forged_id_is_refused() -> None:
    doc = stage_to_json(stage_from_spec(spec()))
    doc["id"] = "0" * 64
    with pytest.raises(NoetherError) as ei:
        stage_from_spec(doc)
    assert ei.value.code == "id_mismatch"


def test_properties_parse_and_unknown_kind_is_refused() -> None:
    s = stage_from_spec(spec(properties=[{"kind": "range", "field": "output", "min": 0}]))
    assert len(s.properties) == 1
    # Upstream's own example writes kinds in CamelCase: the same kinds.
    camel = stage_from_spec(spec(properties=[{"kind": "Range", "field": "output", "min": 0}]))
    assert camel.properties == s.properties
    with pytest.raises(NoetherError) as ei:
        stage_from_spec(spec(properties=[{"kind": "Rnage", "field": "output"}]))
    assert ei.value.code == "invalid_property"
    assert ei.value.path == "spec.properties[0]"
    assert ei.value.message.startswith("unknown property kind 'Rnage'; did you mean `range`?")


def test_a_misspelt_implementation_is_named_not_a_missing_id() -> None:
    doc = spec()
    doc["implementaton"] = doc.pop("implementation")
    with pytest.raises(NoetherError) as ei:
        stage_from_spec(doc, path="impl.json")
    assert str(ei.value) == "impl.json: unknown field `implementaton` in stage spec; did you mean `implementation`?"
    assert ei.value.hint is not None and "implementation" in ei.value.hint
    del doc["implementaton"]
    with pytest.raises(NoetherError) as ei:
        stage_from_spec(doc)
    assert ei.value.message.startswith('missing "implementation"')


def test_comment_keys_and_the_requested_lifecycle() -> None:
    from noether_nix.model.stage import spec_lifecycle

    assert stage_from_spec(spec(_comment="a note", _author={"x": 1})).name == "add1"
    assert spec_lifecycle(spec(lifecycle="Draft")) == "Draft"
    assert spec_lifecycle(spec(lifecycle="Active")) == "Active"
    assert spec_lifecycle(spec()) is None


def test_a_full_stage_json_with_an_unknown_field_is_refused() -> None:
    doc = stage_to_json(stage_from_spec(spec()))
    doc["descripton"] = "x"
    with pytest.raises(NoetherError) as ei:
        stage_from_spec(doc, path="s.json")
    assert str(ei.value) == "s.json: unknown field `descripton` in stage; did you mean `description`?"
    doc = stage_to_json(stage_from_spec(spec()))
    doc["signature"]["efects"] = doc["signature"].pop("effects")
    with pytest.raises(NoetherError) as ei:
        stage_from_spec(doc, path="s.json")
    assert str(ei.value) == "s.json.signature: unknown field `efects` in stage signature; did you mean `effects`?"


def test_rust_specs_are_stored_with_their_ids() -> None:
    s = stage_from_spec(spec(language="rust", implementation="pub fn execute(x: f64) -> f64 { x + 1.0 }"))
    assert s.implementation_language == "rust" and s.id == s.computed_id()
