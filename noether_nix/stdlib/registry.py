"""In-process implementations of Pure stdlib stages, keyed by stage name.

Only stages whose effects are Pure (optionally Fallible) run in the daemon
process. A failing call raises ``StageFailure`` with a sentence; nothing
ever falls back to an example's output.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from noether_nix.model.jcs import jcs


class StageFailure(Exception):
    pass


Impl = Callable[[Any], Any]
PURE: dict[str, Impl] = {}


def pure(name: str) -> Callable[[Impl], Impl]:
    def register(fn: Impl) -> Impl:
        PURE[name] = fn
        return fn

    return register


def _text(v: Any, what: str = "input") -> str:
    if not isinstance(v, str):
        raise StageFailure(f"{what} must be text, got {type(v).__name__}")
    return v


def _list(v: Any, what: str = "input") -> list[Any]:
    if not isinstance(v, list):
        raise StageFailure(f"{what} must be a list, got {type(v).__name__}")
    return v


def _numbers(v: Any) -> list[float]:
    items = _list(v)
    for x in items:
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise StageFailure(f"every element must be a number, got {json.dumps(x)[:40]}")
    return items


def _record(v: Any, *fields: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise StageFailure(f"input must be a record with {', '.join(fields)}")
    missing = [f for f in fields if f not in v]
    if missing:
        raise StageFailure(f"input is missing {', '.join(missing)}")
    return v


@pure("identity")
def identity(v: Any) -> Any:
    return v


@pure("text_upper")
def text_upper(v: Any) -> Any:
    return _text(v).upper()


@pure("text_lower")
def text_lower(v: Any) -> Any:
    return _text(v).lower()


@pure("text_length")
def text_length(v: Any) -> Any:
    return len(_text(v))


@pure("text_trim")
def text_trim(v: Any) -> Any:
    return _text(v).strip()


@pure("text_reverse")
def text_reverse(v: Any) -> Any:
    return _text(v)[::-1]


@pure("text_split")
def text_split(v: Any) -> Any:
    r = _record(v, "text", "delimiter")
    return _text(r["text"], "text").split(_text(r["delimiter"], "delimiter"))


@pure("text_join")
def text_join(v: Any) -> Any:
    r = _record(v, "items", "delimiter")
    return _text(r["delimiter"], "delimiter").join(_text(x, "item") for x in _list(r["items"], "items"))


@pure("text_contains")
def text_contains(v: Any) -> Any:
    r = _record(v, "text", "substring")
    return _text(r["substring"], "substring") in _text(r["text"], "text")


@pure("text_template")
def text_template(v: Any) -> Any:
    r = _record(v, "template", "variables")
    out = _text(r["template"], "template")
    variables = r["variables"]
    if not isinstance(variables, dict):
        raise StageFailure("variables must be a map of text")
    for k, val in variables.items():
        out = out.replace("{{" + k + "}}", val if isinstance(val, str) else json.dumps(val))
    return out


def _to_text(v: Any) -> str:
    return v if isinstance(v, str) else jcs(v).decode()


@pure("to_text")
def to_text(v: Any) -> Any:
    return _to_text(v)


@pure("to_json")
def to_json(v: Any) -> Any:
    return jcs(v).decode()


@pure("parse_json")
def parse_json(v: Any) -> Any:
    try:
        return json.loads(_text(v))
    except json.JSONDecodeError as e:
        raise StageFailure(f"not valid JSON: {e}") from None


@pure("head")
def head(v: Any) -> Any:
    items = _list(v)
    if not items:
        raise StageFailure("head of an empty list")
    return items[0]


@pure("tail")
def tail(v: Any) -> Any:
    return _list(v)[1:]


@pure("list_length")
def list_length(v: Any) -> Any:
    return len(_list(v))


@pure("num_sum")
def num_sum(v: Any) -> Any:
    return sum(_numbers(v))


def _nonempty_numbers(v: Any, what: str) -> list[float]:
    items = _numbers(v)
    if not items:
        raise StageFailure(f"{what} of an empty list")
    return items


@pure("num_avg")
def num_avg(v: Any) -> Any:
    items = _nonempty_numbers(v, "average")
    return sum(items) / len(items)


@pure("num_min")
def num_min(v: Any) -> Any:
    return min(_nonempty_numbers(v, "minimum"))


@pure("num_max")
def num_max(v: Any) -> Any:
    return max(_nonempty_numbers(v, "maximum"))
