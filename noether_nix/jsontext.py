"""JSON text decoded strictly with the standard library, for processes that stay lean.

A client of a live daemon reads a graph file, an ``--input`` and the
daemon's NDJSON answer; importing msgspec for that costs more than the rest
of such a process. ``decode`` accepts exactly what ``msgspec.json.decode``
accepts where the two differ (a test holds them equal): UTF-8 only, no
``NaN`` / ``Infinity``, no number that overflows a float, no lone surrogate
escape; nesting too deep is an error too, not a crash.
"""

from __future__ import annotations

import json

TYPE_CHECKING = False  # no typing import on the CLI's entry (see errors.py)
if TYPE_CHECKING:
    from typing import Any


class JSONTextError(ValueError):
    """The text is not JSON this project accepts; the message says where."""


def _constant(name: str) -> Any:
    raise JSONTextError(f"{name} is not JSON")


def _float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise JSONTextError(f"number out of range: {text[:40]}")
    return value


_DECODER = json.JSONDecoder(parse_constant=_constant, parse_float=_float)


def _no_lone_surrogates(value: Any) -> None:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise JSONTextError("a string holds a lone surrogate escape") from None
        elif isinstance(v, dict):
            stack.extend(v)
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


def decode(raw: bytes | str) -> Any:
    """The value of a JSON document; ``JSONTextError`` when it is not one."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
        if text is raw:
            text.encode("utf-8")  # a str from argv may carry lone surrogates (undecodable bytes) itself
        value = _DECODER.decode(text)
    except JSONTextError:
        raise
    except (UnicodeDecodeError, UnicodeEncodeError) as e:
        raise JSONTextError(f"not UTF-8: {e.reason} at position {e.start}") from None
    except RecursionError:
        raise JSONTextError("nested too deeply") from None
    except ValueError as e:  # JSONDecodeError; an integer of more digits than Python converts
        raise JSONTextError(str(e)) from None
    if "\\u" in text:  # only an escape can make a lone surrogate (the text itself is valid UTF-8)
        _no_lone_surrogates(value)
    return value
