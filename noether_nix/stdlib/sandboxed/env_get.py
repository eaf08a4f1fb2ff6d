"""env_get: {name} -> the variable's value, or null when it is not set."""

import os
from typing import Any


class StageError(Exception):
    pass


def execute(input: Any) -> Any:
    if not isinstance(input, dict) or not isinstance(input.get("name"), str):
        raise StageError("input must be a record with a text field 'name'")
    name = input["name"]
    if not name or "=" in name or "\0" in name:
        raise StageError(f"{name!r} is not a valid environment variable name")
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise StageError(f"environment variable {name} is not valid UTF-8") from None
    return value
