"""``POST /compositions/run``: a graph run in the sandboxed engine, stages from the registry.

The engine keeps its own state (Nix programs, pure cache, run history, the
stdlib) in a work store under ``work_home``; references the work store does
not know resolve from the registry's database through the same remote-source
hook a client's registry uses. ``run_graph`` is the one place that calls the
engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from noether_nix.errors import NoetherError
from noether_nix.registry.layered import Layered
from noether_nix.store.remote import StageLookup
from noether_nix.store.stages import StageStore


class DatabaseSource:
    """``RemoteSource`` over the registry's own stage table (its own connection)."""

    own_lifecycles = True

    def __init__(self, reader: StageStore, origin: str) -> None:
        self.reader = reader
        self.origin = origin

    def lookup(self, local: StageLookup, ref: str) -> tuple[StageLookup, list[tuple[str, str]]]:
        return Layered(local, self.reader), []


async def run_graph(engine: Any, graph: Any, input: Any, dry_run: bool, options: dict[str, Any]) -> dict[str, Any]:
    from noether_nix.engine.engine import RunOptions

    try:
        opts = msgspec.convert(options, RunOptions)
    except msgspec.ValidationError as e:
        raise NoetherError("validation_failed", f"invalid run options: {e}", path="options") from None
    if dry_run:
        return {"dry_run": True, **engine.check(graph, input, opts)}
    result = await engine.run(graph, input, opts)
    out: dict[str, Any] = msgspec.to_builtins(result)
    return out


class CompositionRunner:
    def __init__(self, work_home: Path) -> None:
        from noether_nix.engine.engine import Engine

        work_home.mkdir(parents=True, exist_ok=True)
        self.engine = Engine(store=StageStore(work_home / "noether.db"))

    async def __call__(self, graph: Any, input: Any, dry_run: bool, options: dict[str, Any]) -> dict[str, Any]:
        return await run_graph(self.engine, graph, input, dry_run, options)
