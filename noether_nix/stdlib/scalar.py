"""Scalar conversions (upstream module ``scalar``)."""

from __future__ import annotations

import json
import re
from typing import Any

from noether_nix.model.jcs import serde_compact
from noether_nix.stdlib._shapes import (
    Impl,
    StageFailure,
    finite,
    is_number,
    need_text,
    registrar,
    show,
    text_of,
)

IMPLS: dict[str, Impl] = {}
stage = registrar(IMPLS)

# What Rust's ``f64::from_str`` accepts as a finite decimal: an optional sign,
# digits with an optional point (either side may be empty, not both) and an
# optional exponent. Unlike Python's float(), no spaces or underscores.
_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


@stage("to_text")
def to_text(value: Any) -> Any:
    return text_of(value)


@stage("to_number")
def to_number(value: Any) -> Any:
    if is_number(value):
        return value
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, str):
        if not _DECIMAL.fullmatch(value):
            raise StageFailure(f"cannot parse {serde_compact(value).decode()} as a number")
        return finite(float(value), f"{serde_compact(value).decode()} as a number")
    raise StageFailure(f"cannot convert {show(value)} to a number; expected text, a number or a boolean")


@stage("to_bool")
def to_bool(value: Any) -> Any:
    # Truthiness as upstream: false, null, 0 and "" are false; lists and
    # records (even empty ones) are true.
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if is_number(value):
        return value != 0
    if isinstance(value, str):
        return value != ""
    return True


@stage("parse_json")
def parse_json(value: Any) -> Any:
    text = need_text(value)
    try:
        parsed = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except json.JSONDecodeError as e:
        raise StageFailure(f"input is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except ValueError as e:
        raise StageFailure(f"input is not valid JSON: {e}") from None
    return parsed


def _finite_float(literal: str) -> float:
    number = float(literal)
    if number in (float("inf"), float("-inf")):
        raise ValueError(f"number {literal} is out of range")
    return number


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN / Infinity; JSON (and serde_json) does not.
    raise ValueError(f"{name} is not a JSON value")


@stage("to_json")
def to_json(value: Any) -> Any:
    # serde_json::to_string: compact, keys sorted, floats in ryu form (1.0).
    return serde_compact(value).decode()
