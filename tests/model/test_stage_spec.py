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
        ({"effects": [{"effect": "FsRead", "path": "data"}]}, "invalid_effect", "spec.effects[0]", "absolute"),
        ({"effects": [{"effect": "FsWrite", "path": "/a/../etc"}]}, "invalid_effect", "spec.effects[0]", "'..'"),
        ({"input": "Txt"}, "invalid_type", "spec.input", "unknown type kind 'Txt'"),
        ({"output": {"kind": "Lst", "value": "Text"}}, "invalid_type", "spec.output.kind", "Invalid value 'Lst'"),
        ({"implementation": "def run(x):\n    return x\n"}, "missing_execute", "spec.implementation", "def execute(input)"),
        ({"implementation": "def execute(:\n"}, "invalid_implementation", "spec.implementation", "does not parse"),
        ({"language": "cobol"}, "unsupported_language", "spec.language", "'cobol' is not supported"),
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
    with pytest.raises(NoetherError) as ei:
        stage_from_spec(spec(properties=[{"kind": "Range", "field": "output"}]))
    assert ei.value.code == "invalid_property"
    assert ei.value.path == "spec.properties[0]"
