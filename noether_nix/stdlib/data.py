"""Structured-data stages (upstream module ``data``).

``arrow_from_records`` / ``records_to_arrow`` are out of scope (no Arrow
dependency); see ``registry.CATEGORY``.
"""

from __future__ import annotations

import csv
import io
import re
from typing import TYPE_CHECKING, Any

from noether_nix.model.jcs import jcs
from noether_nix.model.values import json_type_name
from noether_nix.stdlib._patterns import MAX_WEIGHT, compile_user, weight
from noether_nix.stdlib._shapes import (
    Impl,
    StageFailure,
    field_list,
    field_text,
    is_number,
    need_record,
    optional_bool,
    optional_text,
    output_room,
    registrar,
    show,
    time_left,
)

if TYPE_CHECKING:
    import regex

IMPLS: dict[str, Impl] = {}
stage = registrar(IMPLS)


def _delimiter(record: dict[str, Any]) -> str:
    delimiter = optional_text(record, "delimiter")
    if delimiter is None:
        return ","
    if len(delimiter) != 1 or delimiter in '"\r\n':
        raise StageFailure(
            f"field 'delimiter' must be a single character other than a quote or line break, "
            f"got {delimiter!r}"
        )
    return delimiter


@stage("csv_parse")
def csv_parse(value: Any) -> Any:
    record = need_record(value, "text")
    text = field_text(record, "text")
    delimiter = _delimiter(record)
    has_header = optional_bool(record, "has_header")
    has_header = True if has_header is None else has_header
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        # Blank lines carry no record (as the Rust csv crate reads them).
        rows = [row for row in reader if row]
    except csv.Error as e:
        raise StageFailure(f"text is not valid CSV: {e} (line {reader.line_num})") from None
    if not rows:
        return []
    if has_header:
        header, body = rows[0], rows[1:]
        if len(set(header)) != len(header):
            raise StageFailure(f"the header row names a column twice: {', '.join(header)}")
    else:
        # Without a header, columns are named by their position: "0", "1", ...
        header, body = [str(i) for i in range(len(rows[0]))], rows
    out = []
    for n, row in enumerate(body):
        if len(row) != len(header):
            line = n + (2 if has_header else 1)
            raise StageFailure(
                f"CSV record {line} has {len(row)} field{'s' if len(row) != 1 else ''} "
                f"but the {'header' if has_header else 'first record'} has {len(header)}"
            )
        out.append(dict(zip(header, row, strict=True)))
    return out


def _csv_field(text: str, delimiter: str) -> str:
    # Quote only when needed, doubling quotes (RFC 4180; the csv crate's default).
    if delimiter in text or any(c in text for c in '"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


@stage("csv_write")
def csv_write(value: Any) -> Any:
    record = need_record(value, "records")
    records = field_list(record, "records")
    delimiter = _delimiter(record)
    columns: set[str] = set()
    for i, row in enumerate(records):
        if not isinstance(row, dict):
            raise StageFailure(f"record {i} must be a map of text to text, got {show(row)}")
        for column, cell in row.items():
            if not isinstance(cell, str):
                raise StageFailure(f"record {i} field '{column}' must be text, got {show(cell)}")
        columns.update(row)
    if not records:
        return ""
    # Every record writes every column: 5,000 records of one column each are 25 million
    # cells. At least a delimiter or a line break per cell, measured before they are written.
    output_room((len(records) + 1) * len(columns) + 2, "the CSV text")
    # Maps have no column order of their own: columns come sorted (as
    # upstream's BTreeMap rows), and a record without a column writes "".
    header = sorted(columns)
    lines = [delimiter.join(_csv_field(c, delimiter) for c in header)]
    lines += [delimiter.join(_csv_field(row.get(c, ""), delimiter) for c in header) for row in records]
    return "\n".join(lines)


# ---------------------------------------------------------------- json_merge


def _merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, patch_value in patch.items():
            merged[key] = _merge(base[key], patch_value) if key in base else patch_value
        return merged
    return patch


@stage("json_merge")
def json_merge(value: Any) -> Any:
    record = need_record(value, "base", "patch")
    return _merge(record["base"], record["patch"])


# ----------------------------------------------------------------- json_path

_SEGMENT = re.compile(r"\.?(?:\[(?P<index>[^\]]*)\]|(?P<field>[^.\[]+))")


def _walk(data: Any, path: str) -> Any:
    # Upstream's subset of JSONPath: $, .field, [index], in any sequence.
    rest = path[1:] if path.startswith("$") else path
    current, at, pos = data, "$", 0
    while pos < len(rest):
        if rest[pos:] == ".":
            break
        m = _SEGMENT.match(rest, pos)
        if m is None:
            if rest[pos:].lstrip(".").startswith("["):
                raise StageFailure(f"path {path!r} has an unclosed bracket")
            raise StageFailure(f"path {path!r} is not valid at {rest[pos:]!r}")
        if m.group("index") is not None:
            raw = m.group("index")
            if not raw.isdigit() or not raw.isascii():
                raise StageFailure(f"path {path!r}: [{raw}] is not a list index (a whole number ≥ 0)")
            index = int(raw)
            if not isinstance(current, list):
                raise StageFailure(f"path {path!r}: {at} is {show(current)}, not a list, so [{index}] has nothing to index")
            if index >= len(current):
                raise StageFailure(f"path {path!r}: index {index} is out of bounds at {at} (length {len(current)})")
            current, at = current[index], f"{at}[{index}]"
        else:
            name = m.group("field")
            if not isinstance(current, dict):
                raise StageFailure(f"path {path!r}: {at} is {show(current)}, not a record, so it has no field '{name}'")
            if name not in current:
                raise StageFailure(f"path {path!r}: field '{name}' not found at {at}")
            current, at = current[name], f"{at}.{name}"
        pos = m.end()
    return current


@stage("json_path")
def json_path(value: Any) -> Any:
    record = need_record(value, "data", "path")
    return _walk(record["data"], field_text(record, "path"))


# ------------------------------------------------------ json_schema_validate

_JSON_TYPES = ("null", "boolean", "integer", "number", "string", "array", "object")


def _has_type(v: Any, t: str) -> bool:
    if t == "integer":
        return is_number(v) and float(v).is_integer()
    return json_type_name(v) == t


class _Errors:
    """The errors found so far, counted against the value cap as they come: a pattern or a
    required name is repeated in the error of every item of a list."""

    def __init__(self) -> None:
        self.found: list[str] = []
        self.size = 2
        # What a schema says that costs work to use, worked out once per schema record
        # (the schema of a list's items is used for every item).
        self.enums: dict[int, set[bytes]] = {}
        self.consts: dict[int, bytes] = {}
        self.order: dict[int, dict[str, int]] = {}
        # Compiled patterns, kept while their weight (``_patterns.weight``) adds up to at
        # most ``MAX_WEIGHT``: the same pattern is not compiled again for every item, and
        # a schema of many heavy patterns does not hold them all at once.
        self.patterns: dict[str, regex.Pattern[str]] = {}
        self.pattern_room = MAX_WEIGHT

    def pattern(self, pattern: str) -> regex.Pattern[str]:
        found = self.patterns.get(pattern)
        if found is not None:
            return found
        try:
            compiled = compile_user(pattern)
        except StageFailure as e:
            raise StageFailure(f"schema pattern: {e}") from None
        heavy = weight(pattern)
        if heavy <= self.pattern_room:
            self.pattern_room -= heavy
            self.patterns[pattern] = compiled
        return compiled

    def append(self, message: str) -> None:
        self.size += len(message) + 3
        output_room(self.size, "the list of errors")
        self.found.append(message)


def _check(data: Any, schema: Any, at: str, errors: _Errors) -> None:
    """A core subset of JSON Schema: type, enum, const, properties, required,
    additionalProperties (boolean), items, min/max (Length, Items), minimum,
    maximum, pattern. Error texts for the top level are upstream's."""
    if schema is True or schema == {}:
        return
    if schema is False:
        errors.append(f"{at}no value is allowed here".strip())
        return
    if not isinstance(schema, dict):
        raise StageFailure(f"schema{'' if not at else ' at ' + at.rstrip(': ')} must be a record, got {show(schema)}")

    def fail(message: str) -> None:
        errors.append(at + message)

    expected = schema.get("type")
    if expected is not None:
        allowed = expected if isinstance(expected, list) else [expected]
        for t in allowed:
            if t not in _JSON_TYPES:
                raise StageFailure(f"schema type {t!r} is not a JSON Schema type ({', '.join(_JSON_TYPES)})")
        if not any(_has_type(data, t) for t in allowed):
            fail(f"expected {' or '.join(allowed)}, got {json_type_name(data)}")
            return
    if "enum" in schema:
        options = schema["enum"]
        if not isinstance(options, list):
            raise StageFailure(f"schema 'enum' must be a list, got {show(options)}")
        members = errors.enums.get(id(options))
        if members is None:
            members = errors.enums[id(options)] = {jcs(o) for o in options}
        if jcs(data) not in members:
            fail("value is not one of the enum values")
    if "const" in schema:
        const = errors.consts.get(id(schema))
        if const is None:
            const = errors.consts[id(schema)] = jcs(schema["const"])
        if jcs(data) != const:
            fail("value is not the const value")
    if isinstance(data, dict):
        properties = schema.get("properties", {})
        if not isinstance(properties, dict):
            raise StageFailure(f"schema 'properties' must be a record, got {show(properties)}")
        for name in schema.get("required", []):
            if name not in data:
                fail(f"missing required property '{name}'")
        # The properties the data has, in the schema's order: a schema of 100,000 properties
        # for a list of 100,000 records is not 10^10 lookups.
        if len(properties) <= len(data):
            present = [name for name in properties if name in data]
        else:
            order = errors.order.get(id(properties))
            if order is None:
                order = errors.order[id(properties)] = {name: i for i, name in enumerate(properties)}
            present = sorted((name for name in data if name in order), key=order.__getitem__)
        for name in present:
            _check(data[name], properties[name], f"{_at(at)}.{name}: ", errors)
        if schema.get("additionalProperties") is False:
            for name in data:
                if name not in properties:
                    fail(f"property '{name}' is not allowed")
    if isinstance(data, list):
        if "items" in schema:
            for i, item in enumerate(data):
                _check(item, schema["items"], f"{_at(at)}[{i}]: ", errors)
        _bound(len(data), schema, "minItems", "maxItems", "items", fail)
    if isinstance(data, str):
        _bound(len(data), schema, "minLength", "maxLength", "characters", fail)
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            compiled = errors.pattern(pattern)
            # A schema's pattern is the caller's: bounded by the stage's time budget.
            if compiled.search(data, concurrent=True, timeout=time_left()) is None:
                fail(f"text does not match pattern {pattern!r}")
    if is_number(data):
        if is_number(schema.get("minimum")) and data < schema["minimum"]:
            fail(f"{data} is less than the minimum {schema['minimum']}")
        if is_number(schema.get("maximum")) and data > schema["maximum"]:
            fail(f"{data} is greater than the maximum {schema['maximum']}")


def _at(prefix: str) -> str:
    return prefix[:-2] if prefix.endswith(": ") else "$"


def _bound(size: int, schema: dict[str, Any], lo: str, hi: str, unit: str, fail: Any) -> None:
    if is_number(schema.get(lo)) and size < schema[lo]:
        fail(f"expected at least {schema[lo]} {unit}, got {size}")
    if is_number(schema.get(hi)) and size > schema[hi]:
        fail(f"expected at most {schema[hi]} {unit}, got {size}")


@stage("json_schema_validate")
def json_schema_validate(value: Any) -> Any:
    record = need_record(value, "data", "schema")
    errors = _Errors()
    _check(record["data"], record["schema"], "", errors)
    return {"errors": errors.found, "valid": not errors.found}
