"""stdin_read: null -> all text on the stage's standard input.

Note: under the stage wrapper, standard input carries the stage's JSON
input and is already consumed, so this reads what is left (usually "").
The engine decides what the stage's stdin is.
"""

import sys
from typing import Any


class StageError(Exception):
    pass


def execute(input: Any) -> Any:
    try:
        return sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError as e:
        raise StageError(f"standard input is not UTF-8 text (byte {e.start})") from None
    except (OSError, ValueError, AttributeError):
        return ""
