"""Per-stage programs: built once per (stage, runtime), then reused."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import weakref
from pathlib import Path

import msgspec

from noether_nix.deferred import PerRun, trio
from noether_nix.errors import NoetherError
from noether_nix.nix.build import nix_build, nix_expr, nix_tool
from noether_nix.nix.registry import ProgramRegistry
from noether_nix.nix.requirements import ensure_wheels, parse_requirements
from noether_nix.nix.runtime import Runtime, ensure_runtime, normalise_language
from noether_nix.paths import noether_home, private_dir
from noether_nix.settings import settings

# Part of every program's derivation: bump it when a wrapper's behaviour changes.
WRAPPER_VERSION = "6"
_WRAPPER_FILES = {"python": "python.py.in", "javascript": "javascript.js.in", "bash": "bash.sh.in"}


class Program(msgspec.Struct, frozen=True):
    store_path: str
    argv: list[str]  # what to exec inside the sandbox
    closure: list[str]  # store paths the sandbox must ro-bind
    built: bool  # False when the registry already had it
    build_ms: int


def registry_key(runtime: Runtime) -> str:
    """What a built program is recorded under besides its stage: the runtime and the wrapper's
    version, so a new wrapper means a new build rather than the old program found again."""
    return f"{runtime.store_path}?wrapper={WRAPPER_VERSION}"


def wrapper_source(language: str) -> str:
    return Path(__file__).with_name("wrappers").joinpath(_WRAPPER_FILES[language]).read_text()


def store_closure(path: str) -> list[str]:
    proc = subprocess.run([nix_tool("nix-store"), "-qR", path], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise NoetherError("nix_query_failed", f"cannot list the closure of {path}: {proc.stderr.strip()}", path=path)
    return sorted(proc.stdout.split())


# Concurrent requests for the same program (warmup racing a first run) share one build.
_key_locks: dict[tuple[str, str], threading.Lock] = {}
_key_locks_guard = threading.Lock()


def _key_lock(key: tuple[str, str]) -> threading.Lock:
    with _key_locks_guard:
        return _key_locks.setdefault(key, threading.Lock())


def build_stage_program(stage_id: str, language: str, code: str, *, registry: ProgramRegistry,
                        timeout_s: float | None = None) -> Program:
    """The stage's program, built on first request and looked up afterwards."""
    lang = normalise_language(language)
    runtime: Runtime = ensure_runtime(lang)
    key = registry_key(runtime)
    hit = registry.get(stage_id, key)
    if hit is not None:
        return Program(hit.program, [f"{hit.program}/bin/stage"], hit.closure, built=False, build_ms=0)
    with _key_lock((stage_id, key)):
        hit = registry.get(stage_id, key)
        if hit is not None:
            return Program(hit.program, [f"{hit.program}/bin/stage"], hit.closure, built=False, build_ms=0)
        return _build(stage_id, lang, code, runtime, registry, timeout_s)


def _build(stage_id: str, lang: str, code: str, runtime: Runtime, registry: ProgramRegistry,
           timeout_s: float | None) -> Program:
    builder = runtime if lang == "python" and runtime.source == "host-import" else ensure_builder_runtime()
    started = time.monotonic()
    root = private_dir(noether_home() / "gcroots") / f"stage-{stage_id[:16]}-{runtime.store_path[11:19]}"
    try:
        wheels = ensure_wheels(parse_requirements(code), runtime.interpreter, registry.conn) if lang == "python" else []
        out = nix_build(
            nix_expr("stage-program.nix"),
            {},
            {
                "name": f"noether-stage-{stage_id[:12]}",
                "runtime": runtime.store_path,
                "builderRuntime": builder.store_path,
                "interpreter": runtime.interpreter,
                "language": lang,
                "code": code,
                "wrapper": wrapper_source(lang),
                "wrapperVersion": WRAPPER_VERSION,
                "wheels": " ".join(w.store_path for w in wheels),
            },
            root,
            timeout_s=timeout_s,
        )
        closure = store_closure(out)
    except NoetherError as e:
        e.path = e.path or stage_id
        raise
    build_ms = int((time.monotonic() - started) * 1000)
    registry.record(stage_id, registry_key(runtime), out, str(root), build_ms, closure)
    return Program(out, [f"{out}/bin/stage"], closure, built=True, build_ms=build_ms)


def ensure_builder_runtime() -> Runtime:
    """The Python that runs the stage builder: whichever python runtime is configured."""
    return ensure_runtime("python")


# One limiter per trio run (a limiter must not outlive its event loop).
_build_limiter = PerRun("noether_build_limiter", lambda: trio.CapacityLimiter(max(1, settings().nix.build_concurrency)))


#: Programs this process already found or built, per registry, by (stage, language):
#: a stage run after the first needs no worker thread (whose start can cost more than
#: a warm stage run). A program whose store path is gone is looked up again.
_known: weakref.WeakKeyDictionary[ProgramRegistry, dict[tuple[str, str], Program]] = weakref.WeakKeyDictionary()


async def build_stage_program_async(stage_id: str, language: str, code: str, *,
                                    registry: ProgramRegistry, timeout_s: float | None = None) -> Program:
    """The same, off the trio thread, with at most ``nix.build_concurrency`` builds at
    once; cancelling the caller kills the build."""
    memo = _known.setdefault(registry, {})
    known = memo.get((stage_id, language))
    if known is not None and os.path.exists(known.store_path):
        return msgspec.structs.replace(known, built=False, build_ms=0)
    program = await _build_in_thread(stage_id, language, code, registry=registry, timeout_s=timeout_s)
    if len(memo) > 4096:
        memo.clear()
    memo[(stage_id, language)] = program
    return program


async def _build_in_thread(stage_id: str, language: str, code: str, *,
                           registry: ProgramRegistry, timeout_s: float | None) -> Program:
    concurrency = max(1, settings().nix.build_concurrency)
    limiter = _build_limiter.get()
    if limiter.total_tokens != concurrency:
        limiter.total_tokens = concurrency
    from noether_nix.proc import run_sync_killable

    # Cancelled (the run, the request, the daemon stopping): its nix-build is killed, not waited for.
    return await run_sync_killable(
        lambda: build_stage_program(stage_id, language, code, registry=registry, timeout_s=timeout_s),
        limiter=limiter,
    )
