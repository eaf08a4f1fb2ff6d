"""``noether check``, ``trace``, ``runs`` and ``warmup``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from noether_nix.errors import NoetherError

if TYPE_CHECKING:  # imported lazily: the engine is heavy and most commands do not need it
    from noether_nix.engine.engine import Engine, RunOptions
    from noether_nix.nix.registry import ProgramRegistry
    from noether_nix.store.runs import RunStore
    from noether_nix.store.stages import StageStore


def check_graph(engine: Engine, graph: Any, input: Any, options: RunOptions, *,
                check_input: bool = False) -> dict[str, Any]:
    """The report of ``noether check`` / ``run --dry-run``."""
    from noether_nix.graph.check import check_report

    return check_report(engine.prepare(graph, input, options, check_input=check_input))


def find_run(runs: RunStore, ref: str, *, visible_to: int | None = None) -> dict[str, Any]:
    """A run by its id, else the latest run of a composition id (of those ``visible_to`` may see)."""
    run = runs.get(ref, visible_to=visible_to) or runs.latest(ref, visible_to=visible_to)
    if run is None:
        raise NoetherError("trace_not_found", f"no run or composition {ref!r}", path=ref)
    return run


def recent_runs(runs: RunStore, limit: int = 20, *, visible_to: int | None = None) -> dict[str, Any]:
    return {"runs": runs.recent(limit, visible_to=visible_to)}


async def warmup_stages(store: StageStore, registry: ProgramRegistry, refs: list[str] | None = None, *,
                        concurrency: int = 2,
                        progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Build the programs of ``refs`` (default: every Active stage); the warmup report."""
    from noether_nix.nix.warmup import warmup

    stages = [store.resolve(r) for r in refs] if refs else [s for s in store.all() if s.state == "Active"]
    return await warmup(stages, registry, concurrency=concurrency, progress=progress)


RUN_DATA_KEYS = ("composition_id", "run_id", "status", "output", "effects", "trace", "warnings", "spent_cents",
                 "cache")


def run_report(result: dict[str, Any]) -> tuple[dict[str, Any], NoetherError | None]:
    """The data of ``noether run`` from a run result (as builtins), and the error it ends with."""
    data = {k: result[k] for k in RUN_DATA_KEYS}
    err = result.get("error")
    if not err:
        return data, None
    code = 2 if err.get("code") == "budget_exceeded" else 3
    return data, NoetherError(err["code"], f"execution failed: {err['message']}", path=err.get("path"),
                              exit_code=code)
