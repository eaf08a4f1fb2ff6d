"""Warmup: build runtimes and the programs of stages ahead of time, bounded.

Used by ``noether warmup`` and by the daemon at start-up. Runtimes come
first (every program needs one); then ``concurrency`` workers build the
stages' programs. A failure is recorded per stage and never stops the rest:
warmup is an optimisation, a stage that failed here fails again, with the
same classified error, on first use.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import msgspec
import trio

from noether_nix.errors import NoetherError
from noether_nix.model.signing import STDLIB_PUBLIC_KEY
from noether_nix.model.stage import Stage
from noether_nix.nix.programs import build_stage_program_async
from noether_nix.nix.registry import ProgramRegistry
from noether_nix.nix.runtime import ensure_runtime, normalise_language
from noether_nix.proc import run_sync_killable
from noether_nix.settings import settings
from noether_nix.stdlib.registry import ArrowUnavailable, stdlib_program

Progress = Callable[[dict[str, Any]], None]


def _with_program(stage: Stage) -> Stage:
    """A stdlib stage that runs as a sandboxed program, as the engine builds it
    (its program ID and code); any other stage as it is."""
    if stage.implementation_code is not None or stage.signer_public_key != STDLIB_PUBLIC_KEY:
        return stage
    try:
        program = stdlib_program(stage.id, stage.name or "")
    except ArrowUnavailable:
        return stage  # nothing to build: running it says how to install the extra
    if program is None:
        return stage
    return msgspec.structs.replace(stage, id=program[0], implementation_code=program[1],
                                   implementation_language="python")


async def warmup(stages: list[Stage], registry: ProgramRegistry, *,
                 progress: Progress | None = None) -> dict[str, Any]:
    """Build what ``stages`` need; returns (and reports after every step) the counts.

    The report: ``total`` programs to make ready, ``done`` of them so far,
    ``built`` / ``cached`` / ``failed`` (a list of ``{stage_id, error}``),
    ``runtimes`` (language → store path) and ``build_ms`` summed over builds.
    """
    concurrency = max(1, settings().nix.build_concurrency)
    todo = [_with_program(s) for s in stages]
    todo = [s for s in todo if s.implementation_code and s.implementation_language]
    report: dict[str, Any] = {"total": len(todo), "done": 0, "built": 0, "cached": 0, "failed": [],
                              "runtimes": {}, "build_ms": 0}

    def tell() -> None:
        if progress is not None:
            progress({**report, "failed": list(report["failed"])})

    languages: set[str] = set()
    for s in todo:
        with contextlib.suppress(NoetherError):  # an unknown language is reported per stage below
            languages.add(normalise_language(s.implementation_language or ""))
    for lang in sorted(languages):
        try:
            rt = await run_sync_killable(ensure_runtime, lang)
            report["runtimes"][lang] = rt.store_path
        except NoetherError as e:
            report["runtimes"][lang] = {"error": e.to_dict()}
        tell()

    send, receive = trio.open_memory_channel[Stage](0)

    async def worker(queue: trio.MemoryReceiveChannel[Stage]) -> None:
        async with queue:
            async for stage in queue:
                try:
                    p = await build_stage_program_async(stage.id, stage.implementation_language or "",
                                                        stage.implementation_code or "", registry=registry)
                    report["built" if p.built else "cached"] += 1
                    report["build_ms"] += p.build_ms
                except NoetherError as e:
                    report["failed"].append({"stage_id": stage.id, "error": e.to_dict()})
                report["done"] += 1
                tell()

    async with trio.open_nursery() as nursery:
        async with receive:
            for _ in range(max(1, min(concurrency, len(todo)))):
                nursery.start_soon(worker, receive.clone())
        async with send:
            for s in todo:
                await send.send(s)
    return report
