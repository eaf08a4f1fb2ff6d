"""Stage-submission checks (upstream module ``validation``).

``verify_stage_content_hash`` and ``verify_stage_ed25519`` declare
NonDeterministic, so they run in a sandbox (``sandboxed/``).
"""

from __future__ import annotations

from typing import Any

from noether_nix.stdlib._shapes import Impl, StageFailure, registrar, show

IMPLS: dict[str, Impl] = {}
stage = registrar(IMPLS)


def _stage_record(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise StageFailure(f"input must be a stage record, got {show(value)}")
    return value


@stage("check_stage_description")
def check_stage_description(value: Any) -> Any:
    description = _stage_record(value).get("description")
    if isinstance(description, str) and description.strip():
        return {"error": None, "passed": True}
    return {"error": "stage description must not be empty", "passed": False}


@stage("check_stage_examples")
def check_stage_examples(value: Any) -> Any:
    examples = _stage_record(value).get("examples")
    count = len(examples) if isinstance(examples, list) else 0
    warning = None if count else "no examples provided — semantic search quality will be reduced"
    return {"count": count, "passed": True, "warning": warning}


_CHECKS = ("hash_check", "sig_check", "desc_check", "examples_check")


@stage("merge_validation_checks")
def merge_validation_checks(value: Any) -> Any:
    if not isinstance(value, dict):
        raise StageFailure(f"input must be a record of check results ({', '.join(_CHECKS)}), got {show(value)}")
    errors: list[str] = []
    warnings: list[str] = []
    for name in _CHECKS:
        check = value.get(name)
        if not isinstance(check, dict):
            # A missing or malformed check has not passed; upstream silently
            # counts it as failed with no message, which hides the reason.
            errors.append(f"{name} is missing" if check is None else f"{name} is not a check result")
            continue
        passed = check.get("passed") is True
        # A failed check's error and warning are both errors; a passed
        # check's warning stays a warning.
        for key in ("error", "warning") if not passed else ("warning",):
            message = check.get(key)
            if isinstance(message, str) and message:
                (errors if not passed else warnings).append(message)
    return {"errors": errors, "passed": not errors, "warnings": warnings}
