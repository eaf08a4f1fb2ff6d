"""`noether stage test [REF]`: run stages on their own examples.

Upstream's command and output shape: ``{"total", "passed", "failed",
"skipped", "stages": [{"id", "description", "status", "details"}]}``, each
example's output compared with the stage's actual output as JCS bytes.
Stages are skipped for upstream's reasons (an example of a Network, Llm,
NonDeterministic or Process stage says what *a* run returned, not what this
one must), or because they have no examples or nothing that runs them.
Every other stage really runs, through the engine (sandboxed if it needs
to be); no run is recorded in the run history.
"""

from __future__ import annotations

from typing import Any

from noether_nix.engine.engine import Engine, RunOptions
from noether_nix.errors import NoetherError
from noether_nix.graph.preflight import is_stdlib, unrunnable_language
from noether_nix.model.effects import EffectKind
from noether_nix.model.jcs import jcs
from noether_nix.model.stage import Stage
from noether_nix.service.context import Context
from noether_nix.service.endpoints import NoParams, Ref

# Upstream's skip reasons, by effect, in the order they are reported.
SKIP_EFFECTS = (
    (EffectKind.NETWORK, "Network"),
    (EffectKind.LLM, "Llm"),
    (EffectKind.NON_DETERMINISTIC, "NonDeterministic"),
    (EffectKind.PROCESS, "Process"),
)


# Errors that mean an example cannot run here, and the reason reported.
UNRUNNABLE_EXAMPLE = {
    "stage_not_found": "NamesAMissingStage",
    "ambiguous_reference": "NamesAMissingStage",  # a made-up name that is also a prefix of many real IDs
    "path_not_granted": "NeedsAPathGrant",
}


def skip_reason(stage: Stage) -> str | None:
    kinds = set(stage.effects.kinds())
    for kind, reason in SKIP_EFFECTS:
        if kind in kinds:
            return reason
    if not stage.examples:
        return "NoExamples"
    if stage.implementation_code is None and not is_stdlib(stage):
        return "NoImplementation"
    lang = unrunnable_language(stage)
    if lang is not None:
        return f"NotRunnableHere ({lang})"
    return None


def _short(value: Any, limit: int = 200) -> str:
    text = jcs(value).decode("utf-8")
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def run_examples(engine: Engine, stage: Stage) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": stage.id, "description": stage.description}
    reason = skip_reason(stage)
    if reason is not None:
        return {**entry, "status": "skipped", "details": f"skipped: {reason}"}
    graph = {"description": f"stage test {stage.id}", "version": "1", "root": {"op": "Stage", "id": stage.id}}
    # Testing behaviour, not trust: a Draft or unsigned stage is tested too.
    options = RunOptions(allow_unsigned=True, cache=False)
    failures: list[str] = []
    skipped: list[str] = []
    for i, example in enumerate(stage.examples):
        try:
            result = await engine.run(graph, example.input, options, record=False)
        except NoetherError as e:
            failures.append(f"example {i}: could not run: {e.message}")
            continue
        error = result.error or {}
        if error.get("code") in UNRUNNABLE_EXAMPLE:
            # Not the stage's fault: the example names a stage no store has
            # (upstream's map/filter/reduce examples), or a path no test grants.
            skipped.append(f"example {i}: {UNRUNNABLE_EXAMPLE[error['code']]}")
        elif result.status != "ok":
            failures.append(f"example {i}: failed: {error.get('message', result.status)}")
        elif jcs(result.output) != jcs(example.output):
            failures.append(f"example {i}: expected {_short(example.output)}, got {_short(result.output)}")
    total = len(stage.examples)
    ran = total - len(skipped)
    if failures:
        return {**entry, "status": "failed", "details": "; ".join(failures + skipped)}
    if not ran:
        return {**entry, "status": "skipped", "details": "skipped: " + "; ".join(skipped)}
    note = f" ({len(skipped)} skipped: " + "; ".join(skipped) + ")" if skipped else ""
    return {**entry, "status": "passed", "details": f"{ran}/{total} examples passed{note}"}


def stages_to_test(engine: Engine, ref: str | None) -> list[Stage]:
    """Without a reference, every Active stage; with one, the stages whose ID
    starts with it, else the one stage it resolves to (name, legacy ID…)."""
    store = engine.store
    if ref is None:
        found = [s for s in store.all() if s.state == "Active"]
    else:
        found = store.by_prefix(ref) or [store.resolve(ref)]
    return sorted(found, key=lambda s: (s.description, s.id))


async def run_stage_tests(ctx: Context, p: Ref | NoParams) -> dict[str, Any]:
    return await stage_tests(ctx.engine, getattr(p, "ref", None))


async def stage_tests(engine: Engine, ref: str | None = None) -> dict[str, Any]:
    results = [await run_examples(engine, s) for s in stages_to_test(engine, ref)]
    count = {k: sum(1 for r in results if r["status"] == k) for k in ("passed", "failed", "skipped")}
    return {"total": len(results), **count, "stages": results}


def stage_test_error(data: dict[str, Any]) -> NoetherError | None:
    """The error `stage test` reports alongside its data when a stage failed (exit 1)."""
    if not data["failed"]:
        return None
    return NoetherError("stage_test_failed", f"{data['failed']} of {data['total']} stage(s) failed their examples",
                        exit_code=1)
