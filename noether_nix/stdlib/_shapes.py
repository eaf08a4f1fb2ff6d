"""Input-shape checks shared by the in-process stdlib implementations.

Every check either returns the value with its Python type narrowed or raises
``StageFailure`` with a sentence naming the field and what arrived, so a bad
input never escapes as a TypeError or KeyError.
"""

from __future__ import annotations

import contextvars
import math
import time
from collections.abc import Callable
from typing import Any

from noether_nix.model.jcs import serde_compact

Impl = Callable[[Any], Any]


class StageFailure(Exception):
    """A stage could not produce an output for this input; the message says why."""


#: When (``time.monotonic()``) the in-process stage being run must be done by;
#: set by the engine around the call, None when unbounded.
DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("noether_stage_deadline", default=None)


#: The largest output (bytes of JSON) the in-process stage being run may build; set by the
#: engine around the call (``engine.max_value_bytes``), the default cap otherwise.
MAX_OUTPUT: contextvars.ContextVar[int] = contextvars.ContextVar("noether_stage_max_output",
                                                                  default=32 * 1024 * 1024)


class OutputTooLarge(StageFailure):
    """The output would be over the value cap: refused before it is built (``value_too_large``)."""


def output_room(at_least: int, what: str) -> None:
    """Refuse, before building it, an output that would take ``at_least`` bytes of JSON or more
    over the cap: a stage whose output can be much larger than its input (a join, a replacement,
    a template) must not build gigabytes in the daemon's process to find out."""
    cap = MAX_OUTPUT.get()
    if at_least > cap:
        raise OutputTooLarge(f"{what} would take at least {at_least} bytes, over the {cap} byte limit on "
                             "a value")


def time_left() -> float | None:
    """Seconds left before ``DEADLINE`` (at least a millisecond), or None."""
    deadline = DEADLINE.get()
    return None if deadline is None else max(deadline - time.monotonic(), 0.001)


def registrar(table: dict[str, Impl]) -> Callable[[str], Callable[[Impl], Impl]]:
    """A decorator factory that files implementations under their stage name."""

    def stage(name: str) -> Callable[[Impl], Impl]:
        def register(fn: Impl) -> Impl:
            table[name] = fn
            return fn

        return register

    return stage


def show(value: Any) -> str:
    """A short description of a value for error messages: its JSON kind and a preview."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, (int, float)):
        return f"a number ({text_of(value)})"
    if isinstance(value, str):
        preview = value if len(value) <= 30 else value[:27] + "..."
        return f"text ({serde_compact(preview).decode()})"
    if isinstance(value, list):
        return f"a list of {len(value)} item{'' if len(value) == 1 else 's'}"
    if isinstance(value, dict):
        return "a record" if value else "an empty record"
    return type(value).__name__


def text_of(value: Any) -> str:
    """Upstream's text form of a value: text as is, anything else as serde_json prints it."""
    if isinstance(value, str):
        return value
    return serde_compact(value).decode()


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def need_text(value: Any, what: str = "input") -> str:
    if not isinstance(value, str):
        raise StageFailure(f"{what} must be text, got {show(value)}")
    return value


def need_list(value: Any, what: str = "input") -> list[Any]:
    if not isinstance(value, list):
        raise StageFailure(f"{what} must be a list, got {show(value)}")
    return value


def need_record(value: Any, *required: str, what: str = "input") -> dict[str, Any]:
    """A JSON object that has every field in ``required``."""
    if not isinstance(value, dict):
        fields = f" with field{'s' if len(required) > 1 else ''} {', '.join(required)}" if required else ""
        raise StageFailure(f"{what} must be a record{fields}, got {show(value)}")
    missing = [f for f in required if f not in value]
    if missing:
        raise StageFailure(
            f"{what} is missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
        )
    return value


def field_text(record: dict[str, Any], name: str) -> str:
    return need_text(record.get(name), f"field '{name}'")


def field_list(record: dict[str, Any], name: str) -> list[Any]:
    return need_list(record.get(name), f"field '{name}'")


def optional_text(record: dict[str, Any], name: str) -> str | None:
    """A field typed ``Text | Null``: absent and null both mean "not given"."""
    value = record.get(name)
    if value is None:
        return None
    return need_text(value, f"field '{name}'")


def optional_bool(record: dict[str, Any], name: str) -> bool | None:
    value = record.get(name)
    if value is None or isinstance(value, bool):
        return value
    raise StageFailure(f"field '{name}' must be a boolean or null, got {show(value)}")


def need_number(value: Any, what: str = "input") -> int | float:
    if not is_number(value):
        raise StageFailure(f"{what} must be a number, got {show(value)}")
    number: int | float = value
    return number


def need_count(value: Any, what: str) -> int:
    """A non-negative whole number; ``3.0`` counts, as JSON does not tell it from ``3``."""
    number = need_number(value, what)
    if isinstance(number, float) and not number.is_integer():
        raise StageFailure(f"{what} must be a whole number, got {text_of(number)}")
    if number < 0:
        raise StageFailure(f"{what} must not be negative, got {text_of(number)}")
    return int(number)


def finite(value: float, what: str) -> float:
    """JSON has no NaN or infinity: a result that overflowed is a failure, not ``null``."""
    if math.isnan(value) or math.isinf(value):
        raise StageFailure(f"{what} is not a finite number (the result overflowed)")
    return value
