"""Stage dispatch: how one stage's implementation runs.

A stage with code runs its Nix-built program through the run's executor.
A stdlib stage runs as its registry entry (``stdlib.registry.STDLIB``)
says: in-process (pure, kv, store, stream), through the engine
(higher-order), in a sandbox (sandboxed, arrow), in the run's process host
(process), or not at all (llm). Per-stage needs — a file wall from the
run's grants, the run's environment, writer-only, per-peer state — are
attributes of the entry, not names checked here.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from noether_nix.deferred import trio
from noether_nix.engine.events import StageOutput
from noether_nix.engine.executor import StageCall, outcome_value
from noether_nix.engine.grants import fs_wall
from noether_nix.engine.offload import off_loop, small
from noether_nix.engine.options import StageError
from noether_nix.engine.state import IN_PROCESS, RunState, Usage
from noether_nix.errors import NoetherError
from noether_nix.graph.preflight import is_stdlib
from noether_nix.model.effects import EffectSet
from noether_nix.model.stage import Stage
from noether_nix.nix.programs import store_closure
from noether_nix.nix.runtime import ensure_runtime
from noether_nix.sandbox.launch import Isolation as SandboxIsolation
from noether_nix.sandbox.policy import policy_from_effects
from noether_nix.sandbox.profile import load_profile
from noether_nix.stdlib._shapes import (
    DEADLINE,
    MAX_OUTPUT,
    OutputTooLarge,
    StageFailure,
    optional_text,
)
from noether_nix.stdlib.registry import (
    STDLIB,
    ArrowUnavailable,
    Entry,
    process_host_source,
    stdlib_program,
)

if TYPE_CHECKING:
    from noether_nix.sandbox.session import SandboxSession


async def dispatch(run: RunState, stage: Stage, value: Any, path: str) -> tuple[Any, Usage]:
    if is_stdlib(stage):
        entry = STDLIB.get(stage.name or "")
        if entry is None:
            raise StageError("no_implementation", f"stdlib stage {stage.label()} has no implementation in this "
                             "version of noether-nix; it will not be faked", path)
        return await _stdlib(run, entry, stage, value, path)
    if stage.implementation_code is not None and stage.implementation_language:
        return await run_program(run, StageCall(
            program_id=stage.id, language=stage.implementation_language, code=stage.implementation_code,
            effects=stage.effects, input=value, limits=run.limits, isolation=run.isolation,
            run_as=run.run_as, peer=run.requester_uid, label=f"stage {stage.label()}"), path)
    raise StageError("no_implementation", f"stage {stage.label()} has no implementation this engine can "
                     "run (no code, and not a stdlib stage)", path)


async def run_program(run: RunState, call: StageCall, path: str) -> tuple[Any, Usage]:
    """``call`` through the run's executor: its output, or its failure as a ``StageError``."""
    if not run.options.cache:
        call = msgspec.structs.replace(call, use_cache=False)
    outcome = await run.services.executor.execute(call)
    usage = Usage.of(outcome)
    try:
        return outcome_value(outcome, call.label, path), usage
    except StageError as e:
        e.usage = usage
        raise


async def _stdlib(run: RunState, entry: Entry, stage: Stage, value: Any, path: str) -> tuple[Any, Usage]:
    label = stage.label()
    category = entry.category
    if category == "higher_order":
        # Only here: higher-order stages are the engine within the engine.
        from noether_nix.engine.higher_order import run_higher_order

        return await run_higher_order(run, stage, value, path), Usage()
    try:
        if entry.writers_only and not run.store_writes:
            raise StageError("forbidden", f"stage {label}: whoever started this run may not add stages to the "
                             "store", path)
        if category == "pure":
            assert entry.impl is not None
            # What it may build: a stage whose output can outgrow its input refuses,
            # before building it, an output over the value cap (``output_room``).
            token = MAX_OUTPUT.set(run.services.config.max_value_bytes)
            try:
                # Small values inline (a thread hop costs more than the work); large
                # ones, and stages whose work can outgrow their input, on a worker thread.
                if not entry.off_loop and small(value):
                    return entry.impl(value), IN_PROCESS
                return await _in_process(run, entry.impl, value, label, path)
            finally:
                MAX_OUTPUT.reset(token)
        if category in ("kv", "store"):
            impl = run.services.builtins[entry.name]
            if entry.per_peer and not run.store_writes:
                if category == "kv" and isinstance(value, dict):
                    # A peer's kv keys live in its own namespace: it can neither read nor
                    # overwrite another peer's (or the trusted users') values.
                    ns = optional_text(value, "namespace")
                    value = {**value, "namespace": f"peer-{run.requester_uid}/{ns or ''}"}
                elif category == "store":  # only the requester's own traces
                    impl = functools.partial(impl, visible_to=run.requester_uid)
            # They wait on the database (a writer elsewhere holds it up to its busy
            # timeout) and their work grows with the store: never on the event loop.
            return await _in_process(run, impl, value, label, path)
        if category == "stream":
            return await _stream(run, stage, value, path), IN_PROCESS
    except OutputTooLarge as e:
        raise StageError("value_too_large", f"stage {label}: {e}", path, usage=IN_PROCESS,
                         hint="split the work, or raise engine.max_value_bytes in the daemon's settings") from None
    except StageFailure as e:
        raise StageError("stage_failed", f"stage {label} failed: {e}", path, usage=IN_PROCESS) from None
    except StageError as e:
        e.usage = e.usage or IN_PROCESS
        raise
    except NoetherError as e:
        raise StageError("stage_failed", f"stage {label} failed: {e.message}", path, usage=IN_PROCESS) from None
    if category in ("sandboxed", "arrow"):
        try:
            program = stdlib_program(stage.id, entry.name)
        except ArrowUnavailable:
            raise StageError("arrow_unavailable", f"stage {label} needs Apache Arrow: install the extra with "
                             "`pip install 'noether-nix[arrow]'` where the daemon runs", path) from None
        assert program is not None
        effects = stage.effects
        if entry.grant is not None:
            wall = fs_wall(label, entry.grant == "write", value, run.options, path)
            effects = EffectSet.of([*stage.effects.effects, wall])
        # Arrow IPC bytes, like everything here, are parsed in the sandbox, never in the daemon.
        return await run_program(run, StageCall(
            program_id=program[0], language="python", code=program[1], effects=effects, input=value,
            limits=run.limits, isolation=run.isolation, run_as=run.run_as, peer=run.requester_uid,
            label=f"stage {label}",
            env=dict(run.options.env or {}) if entry.run_env else None, clear_env=entry.run_env), path)
    if category == "llm":
        raise StageError("no_llm_provider", f"stage {label} needs an LLM provider, and this noether-nix ships "
                         "none: it would need an \"llm\" entry in the daemon configuration ({\"provider\", "
                         "\"model\", \"api_key_file\"}) and a provider behind it, which this version does not have",
                         path)
    assert category == "process", category
    return await _process_stage(run, stage, entry.name, value, path)


async def _in_process(run: RunState, impl: Callable[[Any], Any], value: Any, label: str,
                      path: str) -> tuple[Any, Usage]:
    """An in-process implementation on a worker thread, within the stage's time budget.
    Work that can check the clock (a regular expression) stops at the budget by
    itself (``DEADLINE``); other work is abandoned to its thread."""
    budget = run.limits.timeout_s
    token = DEADLINE.set(time.monotonic() + budget)  # the worker thread runs in a copy of this context
    try:
        out = await off_loop(impl, value, limiter=run.services.thread_limiter, budget_s=budget,
                             what=f"stage {label}", path=path)
    except (StageError, TimeoutError) as e:
        if isinstance(e, StageError) and e.code != "stage_timed_out":
            raise
        raise StageError("stage_timed_out", f"stage {label} ran past its {budget:g} s budget in the daemon's "
                         "process and was stopped", path, usage=Usage(isolation="in-process", status="timed_out"),
                         details={"status": "timed_out", "budget_s": budget}) from None
    finally:
        DEADLINE.reset(token)
    return out, IN_PROCESS


async def _stream(run: RunState, stage: Stage, value: Any, path: str) -> Any:
    """stdin_read / stdout_write on the run's streams: the text the client
    sent with the run, and output events streamed back to it."""
    if stage.name == "stdin_read":
        if run.options.stdin is None:
            raise StageError("stage_failed", f"stage {stage.label()}: this run was given no standard input "
                             "(noether run --stdin passes yours; the API takes options.stdin)", path)
        return run.options.stdin
    if not isinstance(value, dict) or not isinstance(value.get("text"), str):
        raise StageError("stage_failed", f"stage {stage.label()}: input must be a record with a text field "
                         "'text'", path)
    await run.emit(StageOutput(run.run_id, node_path=path, text=value["text"]))
    return None


_PROCESS_HOST = "process_host"


async def _process_stage(run: RunState, stage: Stage, name: str, value: Any, path: str) -> tuple[Any, Usage]:
    """spawn/wait/signal/kill_process, answered by the run's process host:
    one sandbox (walls from the Process effect: the Nix store and nothing
    else) that lives as long as the run, so a pid one stage returns means
    something to the next. Its processes die when the run ends."""
    limits = run.limits
    if name == "wait_process" and isinstance(value, dict):
        if value.get("timeout_ms") is None:
            # Upstream's default wait is 30 s; it must end before the stage's own timeout.
            value = {**value, "timeout_ms": min(30_000, max(0, int(limits.timeout_s * 1000) - 1000))}
        wait_ms = value.get("timeout_ms")
        if isinstance(wait_ms, (int, float)) and not isinstance(wait_ms, bool) and wait_ms / 1000 >= limits.timeout_s:
            raise StageError("stage_failed", f"stage {stage.label()}: timeout_ms {wait_ms:g} is not under this "
                             f"run's per-stage timeout of {limits.timeout_s:g} s", path)
    async with run.resource_lock:
        host = run.resources.get(_PROCESS_HOST)
        if host is None:
            host = await _open_process_host(run, stage)
            run.resources[_PROCESS_HOST] = host
            run.cleanup.push_async_callback(host.aclose)  # the run's spawned processes end with it
    usage = Usage(isolation=host.isolation)
    answer = await host.request({"op": name, "input": value}, timeout_s=limits.timeout_s)
    if not isinstance(answer, dict) or ("ok" not in answer and "error" not in answer):
        raise StageError("stage_protocol_error", f"stage {stage.label()}: the process host answered {answer!r}",
                         path, usage=usage)
    if "error" in answer:
        raise StageError("stage_failed", f"stage {stage.label()} failed: {answer['error']}", path, usage=usage)
    return answer["ok"], usage


async def _open_process_host(run: RunState, stage: Stage) -> SandboxSession:
    from noether_nix.sandbox.session import open_session

    python = await trio.to_thread.run_sync(ensure_runtime, "python")
    bash = await trio.to_thread.run_sync(ensure_runtime, "bash")  # everyday tools for spawned commands
    profile = load_profile(run.services.config.sandbox_profile)
    closure = await trio.to_thread.run_sync(
        lambda: sorted({*store_closure(python.store_path), *store_closure(bash.store_path)}))
    policy = policy_from_effects(stage.effects, profile=profile, store_paths=closure)
    env = {"PATH": f"{bash.store_path}/bin:{python.store_path}/bin"}
    return await open_session([python.interpreter, "-I", "-S", "-c", process_host_source()], policy=policy,
                              limits=run.limits, isolation=SandboxIsolation(run.isolation), profile=profile,
                              env=env, run_as=run.run_as)
