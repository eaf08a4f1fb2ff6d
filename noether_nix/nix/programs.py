"""Per-stage programs: built once per (stage, runtime), then reused."""

from __future__ import annotations

import time
from importlib import resources

import msgspec
import trio

from noether_nix.errors import NoetherError
from noether_nix.nix.build import nix_build, nix_expr
from noether_nix.nix.registry import ProgramRegistry
from noether_nix.nix.runtime import Runtime, ensure_runtime, normalise_language
from noether_nix.paths import noether_home

WRAPPER_VERSION = "3"
_WRAPPER_FILES = {"python": "python.py.in", "javascript": "javascript.js.in", "bash": "bash.sh.in"}


class Program(msgspec.Struct, frozen=True):
    store_path: str
    argv: list[str]
    closure: list[str]
    built: bool
    build_ms: int


def wrapper_source(language: str) -> str:
    return resources.files("noether_nix.nix").joinpath("wrappers", _WRAPPER_FILES[language]).read_text()


def build_stage_program(stage_id: str, language: str, code: str, *, registry: ProgramRegistry,
                        timeout_s: float = 600) -> Program:
    lang = normalise_language(language)
    runtime: Runtime = ensure_runtime(lang)
    builder = runtime if lang == "python" else ensure_runtime("python")
    hit = registry.lookup(stage_id, runtime.store_path)
    if hit is not None:
        return Program(hit, [f"{hit}/bin/stage"], [hit, runtime.store_path], built=False, build_ms=0)
    started = time.monotonic()
    root = noether_home() / "gcroots" / f"stage-{stage_id[:16]}-{runtime.store_path[11:19]}"
    try:
        out = nix_build(
            nix_expr("stage-program.nix"),
            {},
            {
                "name": f"noether-stage-{stage_id[:12]}",
                "runtime": runtime.store_path,
                "builderRuntime": builder.store_path,
                "interpreter": runtime.interpreter,
                "code": code,
                "wrapper": wrapper_source(lang),
                "wrapperVersion": WRAPPER_VERSION,
            },
            root,
            timeout_s=timeout_s,
        )
    except NoetherError as e:
        e.path = e.path or stage_id
        raise
    build_ms = int((time.monotonic() - started) * 1000)
    registry.record(stage_id, runtime.store_path, out, str(root), build_ms)
    return Program(out, [f"{out}/bin/stage"], [out, runtime.store_path], built=True, build_ms=build_ms)


_build_limiter: trio.CapacityLimiter | None = None


async def build_stage_program_async(stage_id: str, language: str, code: str, *,
                                    registry: ProgramRegistry, concurrency: int = 2) -> Program:
    """The same, off the trio thread, with bounded build concurrency."""
    global _build_limiter
    if _build_limiter is None:
        _build_limiter = trio.CapacityLimiter(concurrency)
    return await trio.to_thread.run_sync(
        lambda: build_stage_program(stage_id, language, code, registry=registry), limiter=_build_limiter
    )
