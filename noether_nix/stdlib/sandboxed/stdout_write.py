"""stdout_write: {text} -> null, writing the text as it is (no newline added).

Under the stage wrapper, sys.stdout is the stage's stderr (real stdout
carries the JSON result), so the text lands in the run's captured stderr.
"""

import sys
from typing import Any


class StageError(Exception):
    pass


def execute(input: Any) -> Any:
    if not isinstance(input, dict) or not isinstance(input.get("text"), str):
        raise StageError("input must be a record with a text field 'text'")
    sys.stdout.write(input["text"])
    sys.stdout.flush()
    return None
