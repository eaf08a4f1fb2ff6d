"""The stage boundary: a stage's output must be what its signature declares.

Upstream's checker verifies a graph's topology, not stage bodies, and its
docs say a stage that declares ``Text -> Number`` and returns a string
"fails at runtime"; upstream's code lets it through. Here it fails, with
``output_type_mismatch`` naming the stage, the declared type and the shape
of what came back. A run turns this off with the run option
``output_type_checks: false`` (``noether run --no-output-type-checks``), a
daemon with ``engine.output_type_checks``: upstream's behaviour.

A stage that printed something and returned ``None`` most likely printed
its result instead of returning it: the error (or, where null is allowed,
a warning) says so.
"""

from __future__ import annotations

from typing import Any

import msgspec

from noether_nix.engine.options import StageError
from noether_nix.engine.state import Usage
from noether_nix.model.stage import Stage
from noether_nix.model.types import AnyType, display
from noether_nix.model.values import conforms

PRINTED_NOT_RETURNED = ("the stage printed output but returned None: return the value from execute() "
                        "instead of printing it")


def shape(value: Any) -> str:
    """A value's shape in a few words: ``a string "abc"``, ``null``, ``an array of 3 items``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, (int, float)):
        return f"a number ({value:g})" if isinstance(value, float) else f"a number ({value})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:39] + "…"
        return f"a string ({shown!r})"
    if isinstance(value, list):
        return f"an array of {len(value)} item{'s' if len(value) != 1 else ''}"
    if isinstance(value, dict):
        keys = ", ".join(sorted(map(str, value))[:5]) + (", …" if len(value) > 5 else "")
        return f"an object with keys {keys}" if value else "an empty object"
    return type(value).__name__


def check_output(stage: Stage, value: Any, usage: Usage, path: str) -> str | None:
    """Raise ``output_type_mismatch`` if ``value`` is not of the stage's declared output type;
    return a warning when the stage printed and returned null where null is allowed."""
    printed = bool(usage.log and usage.log.strip())
    if not isinstance(stage.output, AnyType):
        problem = conforms(value, stage.output, "output")
        if problem is not None:
            where = "" if problem.startswith("output: ") else f" ({problem})"
            raise StageError(
                "output_type_mismatch",
                f"stage {stage.label()} returned {shape(value)}, but its declared output type is "
                f"{display(stage.output)}{where}",
                path,
                usage=msgspec.structs.replace(usage, status="error"),
                hint=PRINTED_NOT_RETURNED if value is None and printed else
                "fix the stage, or its declared output type; `--no-output-type-checks` runs it unchecked, "
                "as upstream does",
                details={"declared": display(stage.output), "problem": problem,
                         **({"printed": usage.log} if printed else {})},
            )
    if value is None and printed:
        return f"stage {stage.label()} returned null and printed output: did it print its result instead of " \
               "returning it?"
    return None
