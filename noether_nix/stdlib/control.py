"""Control stages (upstream module ``control``).

Only ``branch`` is a plain function of its input; ``retry``, ``fallback``,
``timeout``, ``race`` and ``parallel`` run other stages, so the engine runs
them (``registry.HIGHER_ORDER``).
"""

from __future__ import annotations

from typing import Any

from noether_nix.stdlib._shapes import Impl, StageFailure, need_record, registrar, show

IMPLS: dict[str, Impl] = {}
stage = registrar(IMPLS)


@stage("branch")
def branch(value: Any) -> Any:
    record = need_record(value, "condition")
    condition = record["condition"]
    if not isinstance(condition, bool):
        raise StageFailure(f"field 'condition' must be a boolean, got {show(condition)}")
    # A missing arm is null, as upstream.
    return record.get("if_true") if condition else record.get("if_false")
