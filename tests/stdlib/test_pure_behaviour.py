"""Behaviour beyond the catalog examples, and clear failures on bad input."""

from __future__ import annotations

from typing import Any

import pytest

from noether_nix.model.jcs import jcs
from noether_nix.stdlib.registry import PURE, StageFailure


def run(name: str, value: Any) -> Any:
    return PURE[name](value)


def fails(name: str, value: Any) -> str:
    with pytest.raises(StageFailure) as info:
        run(name, value)
    return str(info.value)


# Wrong shapes: a StageFailure whose sentence names what was wrong, never a TypeError/KeyError.
BAD_INPUTS: list[tuple[str, Any, str]] = [
    ("text_upper", 3, "input must be text, got a number (3)"),
    ("text_length", None, "input must be text, got null"),
    ("text_split", {"text": "a"}, "input is missing field delimiter"),
    ("text_split", ["a", ","], "input must be a record with fields text, delimiter, got a list of 2 items"),
    ("text_join", {"items": ["a", 1], "delimiter": ","}, "item 1 of field 'items' must be text, got a number (1)"),
    ("text_template", {"template": "x"}, "input is missing field variables"),
    ("text_template", {"template": "x", "variables": []}, "field 'variables' must be a map of text"),
    ("regex_match", {"text": "a", "pattern": "("}, "invalid regex '('"),
    ("regex_replace", {"text": "a", "pattern": 1, "replacement": ""}, "field 'pattern' must be text"),
    ("head", [], "cannot take the head of an empty list"),
    ("head", "abc", "input must be a list, got text (\"abc\")"),
    ("num_avg", [], "cannot compute the average of an empty list"),
    ("num_min", [], "cannot compute the minimum of an empty list"),
    ("num_sum", [1, "2"], "item 1 must be a number, got text (\"2\")"),
    ("num_max", [True], "item 0 must be a number, got a boolean (true)"),
    ("parse_json", "{nope", "input is not valid JSON"),
    ("parse_json", "NaN", "input is not valid JSON"),
    ("to_number", "abc", "cannot parse \"abc\" as a number"),
    ("to_number", " 42", "cannot parse \" 42\" as a number"),
    ("to_number", "1_000", "cannot parse \"1_000\" as a number"),
    ("to_number", [1], "cannot convert a list of 1 item to a number"),
    ("take", {"items": [1], "count": -1}, "field 'count' must not be negative"),
    ("take", {"items": [1], "count": 1.5}, "field 'count' must be a whole number"),
    ("take", {"items": {}, "count": 1}, "field 'items' must be a list, got an empty record"),
    ("zip", {"left": [1]}, "input is missing field right"),
    ("group_by", {"items": [{"k": 1}, 2], "key": "k"}, "item 1 must be a record with field 'k'"),
    ("group_by", {"items": [{"x": 1}], "key": "k"}, "item 0 has no field 'k' to group by"),
    ("sort", {"items": [1, "a"]}, "cannot sort items of different kinds (number, text)"),
    ("sort", {"items": [{"n": 1}, {"n": None}], "key": "n"}, "cannot sort values of field 'n' of different kinds"),
    ("sort", {"items": [1], "descending": "yes"}, "field 'descending' must be a boolean or null"),
    ("sort", 42, "must be a record with field items"),
    ("json_path", {"data": {"a": 1}, "path": "$.b"}, "field 'b' not found at $"),
    ("json_path", {"data": {"a": [1]}, "path": "$.a[3]"}, "index 3 is out of bounds at $.a (length 1)"),
    ("json_path", {"data": {"a": 1}, "path": "$.a.b"}, "$.a is a number (1), not a record"),
    ("json_path", {"data": [1], "path": "$[x]"}, "[x] is not a list index"),
    ("json_path", {"data": [1], "path": "$[0"}, "has an unclosed bracket"),
    ("json_schema_validate", {"data": 1, "schema": {"type": "str"}}, "schema type 'str' is not a JSON Schema type"),
    ("csv_parse", {"text": "a,b\n1,2,3"}, "CSV record 2 has 3 fields but the header has 2"),
    ("csv_parse", {"text": "a\n1", "delimiter": ";;"}, "field 'delimiter' must be a single character"),
    ("csv_write", {"records": [{"a": 1}]}, "record 0 field 'a' must be text, got a number (1)"),
    ("json_merge", {"base": {}}, "input is missing field patch"),
    ("branch", {"condition": "yes", "if_true": 1}, "field 'condition' must be a boolean, got text"),
    ("router", {"route": "/x", "default": "/y", "routes": {"/a": {}}}, "the default '/y' is not in routes"),
    ("mark_done", [1], "input must be a record, got a list of 1 item"),
    ("clamp_percent", 150, "150 is not a percentage: it must be in [0, 100]"),
    ("clamp_percent", "50", "input must be a number"),
    ("http_status", {"status": "200"}, "field 'status' of the HTTP response must be a number"),
    ("http_body", {"status": 200}, "is missing field body"),
    ("merge_validation_checks", [], "input must be a record of check results"),
    ("check_stage_examples", "x", "input must be a stage record"),
]


@pytest.mark.parametrize(("name", "bad", "message"), BAD_INPUTS, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BAD_INPUTS)])
def test_bad_input_is_a_clear_failure(name: str, bad: Any, message: str) -> None:
    assert message in fails(name, bad)


# Behaviour a user would notice, beyond the five catalog examples per stage.
CASES: list[tuple[str, Any, Any]] = [
    ("to_text", 1.5, "1.5"),
    ("to_text", {"b": 1, "a": [True, None]}, '{"a":[true,null],"b":1}'),
    ("to_json", 1.0, "1.0"),  # serde_json prints an f64 with its point
    ("to_json", "é\n", '"é\\n"'),
    ("to_number", "-.5e1", -5.0),
    ("to_number", "7.", 7.0),
    ("to_bool", "", False),
    ("to_bool", [], True),
    ("to_bool", 0.0, False),
    ("sort", {"items": [{"n": 2, "i": 0}, {"n": 1, "i": 1}, {"n": 2, "i": 2}], "key": "n", "descending": True},
     [{"n": 2, "i": 0}, {"n": 2, "i": 2}, {"n": 1, "i": 1}]),  # stable, also descending
    ("sort", [True, False], [False, True]),
    ("sort", [{"a": 2}, None, {"a": 1}], [{"a": 2}, None, {"a": 1}]),  # no order: kept
    ("group_by", {"items": [{"n": 1}, {"n": "1"}, {"n": 2}], "key": "n"}, {"1": [{"n": 1}, {"n": "1"}], "2": [{"n": 2}]}),
    ("flatten", [[1], 2, [[3]]], [1, 2, [3]]),
    ("take", {"items": [1, 2, 3], "count": 2.0}, [1, 2]),
    ("num_sum", [0.1, 0.2, 0.3], 0.6000000000000001),  # left-to-right f64, not compensated
    ("num_avg", [1, 2], 1.5),
    ("list_dedup", [1, 1.0, {"a": 1, "b": 2}, {"b": 2, "a": 1}], [1, {"a": 1, "b": 2}]),
    ("text_trim", "\x1c x \u3000", "\x1c x"),  # Unicode White_Space only, as Rust's trim
    ("text_split", {"text": "ab", "delimiter": ""}, ["", "a", "b", ""]),
    ("text_replace", {"text": "aXa", "from": "", "to": "!"}, "aXa"),
    ("text_template", {"template": "{{a}} {{b}} {{c}}", "variables": {"a": "{{b}}", "b": "x"}}, "{{b}} x {{c}}"),
    ("text_template", {"template": "n={{n}}", "variables": {"n": 3}}, "n=3"),
    ("regex_match", {"text": "abc\n", "pattern": "^abc$"}, {"full_match": None, "groups": [], "matched": False}),
    ("regex_match", {"text": "abc\n", "pattern": "(?m)^abc$"}, {"full_match": "abc", "groups": [], "matched": True}),
    ("regex_match", {"text": "b", "pattern": "(a)?b"}, {"full_match": "b", "groups": [""], "matched": True}),
    ("regex_match", {"text": "k=v", "pattern": "(?<key>\\w)=(?<val>\\w)"}, {"full_match": "k=v", "groups": ["k", "v"], "matched": True}),
    ("regex_replace", {"text": "k=v", "pattern": "(?P<k>\\w)=(?P<v>\\w)", "replacement": "${v}=$k $$ $9 $1a"}, "v=k $  "),
    ("regex_replace", {"text": "a1b22", "pattern": "\\d+", "replacement": "\\n"}, "a\\nb\\n"),  # no Python escapes
    ("json_path", {"data": {"a": [{"b": [0, {"c": 7}]}]}, "path": "$.a[0].b[1].c"}, 7),
    ("json_path", {"data": {"a": 1}, "path": "$"}, {"a": 1}),
    ("json_path", {"data": {"a": 1}, "path": "a"}, 1),
    ("json_merge", {"base": {"a": {"b": 1, "c": 2}}, "patch": {"a": {"c": None}}}, {"a": {"b": 1, "c": None}}),
    ("json_schema_validate",
     {"data": {"name": 3, "tags": ["x", 1]},
      "schema": {"type": "object", "required": ["name", "age"],
                 "properties": {"name": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}}}},
     {"errors": ["missing required property 'age'", "$.name: expected string, got number",
                 "$.tags[1]: expected string, got number"], "valid": False}),
    ("json_schema_validate", {"data": 3, "schema": {"type": ["integer", "null"], "minimum": 5}},
     {"errors": ["3 is less than the minimum 5"], "valid": False}),
    ("csv_parse", {"text": 'a,b\n"x, y","say ""hi"""\n\n', "delimiter": None, "has_header": None},
     [{"a": "x, y", "b": 'say "hi"'}]),
    ("csv_parse", {"text": "1;2\n3;4", "delimiter": ";", "has_header": False}, [{"0": "1", "1": "2"}, {"0": "3", "1": "4"}]),
    ("csv_write", {"records": [{"a": "x, y", "b": 'say "hi"'}, {"a": "z"}], "delimiter": None},
     'a,b\n"x, y","say ""hi"""\nz,'),
    ("router", {"route": "/docs/intro", "default": "/", "routes": {"/": 1, "/docs": 2}}, 2),
    ("merge_validation_checks", {"hash_check": {"passed": True, "error": None}}, {
        "errors": ["sig_check is missing", "desc_check is missing", "examples_check is missing"],
        "passed": False, "warnings": []}),
    ("check_stage_description", {"description": 5}, {"error": "stage description must not be empty", "passed": False}),
    ("branch", {"condition": False, "if_true": 1}, None),
    ("clamp_percent", 0.0, 0.0),
]


@pytest.mark.parametrize(("name", "value", "expected"), CASES, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(CASES)])
def test_behaviour(name: str, value: Any, expected: Any) -> None:
    assert jcs(run(name, value)) == jcs(expected)


def test_csv_write_then_parse_round_trips() -> None:
    rows = [{"name": "Ann, Jr.", "note": 'line1\nline2 "q"'}, {"name": "Bo", "note": ""}]
    text = run("csv_write", {"records": rows, "delimiter": None})
    assert run("csv_parse", {"text": text, "delimiter": None, "has_header": True}) == rows


def test_numbers_come_back_as_f64_like_upstream() -> None:
    # JCS treats 3 and 3.0 alike, but the trace/pure-cache hash (serde form) does not.
    assert isinstance(run("list_length", [1, 2, 3]), float)
    assert isinstance(run("text_length", "abc"), float)
    assert isinstance(run("http_status", {"status": 200, "body": "", "headers": {}}), float)
    assert isinstance(run("num_sum", [1, 2]), float)


def test_overflow_is_a_failure_not_null() -> None:
    assert "not a finite number" in fails("num_sum", [1e308, 1e308])
    assert "as a number is not a finite number" in fails("to_number", "1e400")


def test_implementations_do_not_mutate_their_input() -> None:
    value = {"base": {"a": {"b": 1}}, "patch": {"a": {"c": 2}}}
    run("json_merge", value)
    assert value == {"base": {"a": {"b": 1}}, "patch": {"a": {"c": 2}}}
    record = {"x": 1}
    run("mark_done", record)
    assert record == {"x": 1}
