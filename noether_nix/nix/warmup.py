"""Warmup: build the programs of Active stages ahead of time, bounded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from noether_nix.errors import NoetherError
from noether_nix.model.stage import Stage
from noether_nix.nix.programs import build_stage_program_async
from noether_nix.nix.registry import ProgramRegistry


async def warmup(stages: list[Stage], registry: ProgramRegistry, *, concurrency: int = 2,
                 progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    todo = [s for s in stages if s.implementation_code and s.implementation_language]
    done: dict[str, Any] = {"total": len(todo), "built": 0, "cached": 0, "failed": []}

    async def one(stage: Stage) -> None:
        try:
            p = await build_stage_program_async(stage.id, stage.implementation_language or "",
                                                stage.implementation_code or "", registry=registry,
                                                concurrency=concurrency)
            done["built" if p.built else "cached"] += 1
        except NoetherError as e:
            done["failed"].append({"stage_id": stage.id, "error": e.to_dict()})
        if progress:
            progress(dict(done))

    async with trio.open_nursery() as nursery:
        for s in todo:
            nursery.start_soon(one, s)
    return done
