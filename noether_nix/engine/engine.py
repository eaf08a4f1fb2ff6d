"""The engine facade: prepare, check and run graphs.

The stack below it, bottom up: ``options`` (run options, the retry loop),
``executor`` (build + policy + sandbox launch, returning a typed outcome),
``state`` (what a run lends its stages), ``higher_order`` and ``dispatch``
(how stages run), ``interpreter`` (the operators). ``Engine`` owns what runs
share — store, pure cache, run history, kv table, executor, limiters — and
turns one run into one ``RunFinished``: emitted as the run's last event,
stored, and returned.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from datetime import UTC, datetime
from typing import Any

import msgspec

from noether_nix.deferred import loaded, trio
from noether_nix.engine.builtin import kv_impls, store_impls
from noether_nix.engine.dispatch import dispatch
from noether_nix.engine.events import RunAccepted, RunFinished, RunStatus, RunWarning
from noether_nix.engine.executor import (
    BlockingExecutor,
    Executor,
    LocalExecutor,
    StageCall,
    StageOutcome,
)
from noether_nix.engine.fastpath import FastPure, simple_types
from noether_nix.engine.grants import check_grants
from noether_nix.engine.interpreter import Emit, Interpreter, Passed
from noether_nix.engine.noloop import NO_LOOP, UNLIMITED, drive, loop_free
from noether_nix.engine.offload import maybe_off_loop, small
from noether_nix.engine.options import Isolation, RunOptions, StageError
from noether_nix.engine.state import Dispatch, StageFacts
from noether_nix.errors import NoetherError, interrupted
from noether_nix.graph.check import CheckOptions, PreparedGraph, check_report, prepare
from noether_nix.graph.preflight import PolicyOptions, is_stdlib, needs_sandbox
from noether_nix.logs import get_logger
from noether_nix.model.effects import EffectKind
from noether_nix.model.stage import Stage
from noether_nix.model.values import check_value, outer_refinements
from noether_nix.nix.registry import ProgramRegistry
from noether_nix.sandbox.bwrap import bwrap_works, find_bwrap
from noether_nix.sandbox.identity import RunAs, check_grant_access
from noether_nix.sandbox.policy import Limits
from noether_nix.sandbox.profile import Profile, load_profile
from noether_nix.settings import EngineSettings, settings
from noether_nix.stdlib.registry import STDLIB
from noether_nix.stdlib.text import ON_TEXT
from noether_nix.store.cache import PureCache
from noether_nix.store.kv import KvStore
from noether_nix.store.remote import remote_source
from noether_nix.store.runs import RunStore
from noether_nix.store.stages import StageStore
from noether_nix.store.stdlib_seed import ensure_stdlib
from noether_nix.store.upstream import import_home_store

__all__ = ["Engine", "Executor", "RunFinished", "RunOptions", "RunResult", "StageCall", "StageError",
           "StageOutcome", "sandbox_usable"]

log = get_logger("noether.engine")

#: What ``Engine.run`` returns: the run's last event.
RunResult = RunFinished
# How long a cancelled run may take to hand its last event to its stream.
_LAST_EVENT_GRACE_S = 5.0


def sandbox_usable() -> bool:
    """Whether bwrap is installed and can create its namespaces here."""
    path = find_bwrap()
    return path is not None and bwrap_works(path)[0]


def engine_limits(config: EngineSettings, profile: Profile) -> Limits:
    """The profile's default limits, with the settings' overrides (each at most the profile's maximum)."""
    return Limits.from_profile(profile, timeout_s=config.timeout_secs, max_output_bytes=config.max_output_bytes,
                               max_stderr_bytes=config.max_stderr_bytes, memory_bytes=config.memory_bytes,
                               max_pids=config.max_pids)


def _fast_pure(stage: Stage) -> FastPure | None:
    """What the fast path needs, for an in-process Pure stdlib stage without refinements."""
    entry = STDLIB.get(stage.name or "") if is_stdlib(stage) else None
    if entry is None or not entry.inline:  # not off_loop: regular expressions go off the event loop call by call
        return None
    assert entry.impl is not None
    if outer_refinements(stage.input) or outer_refinements(stage.output):
        return None
    types = simple_types(stage.input)
    return FastPure(entry.impl, types, on_text=ON_TEXT.get(entry.name) if types == frozenset({str}) else None)


def _stopped_by(e: BaseException) -> str | None:
    """How a run was stopped from outside, as its stored error says it: cancelled (trio), or
    interrupted (Ctrl-C in the process running it); None for anything else."""
    if _is_cancellation(e):
        return "the run was cancelled"
    if interrupted(e):
        return "the run was interrupted"
    return None


def _is_cancellation(e: BaseException) -> bool:
    if not loaded("trio"):  # nothing is a trio.Cancelled then (a run without a loop), and asking would import trio
        return False
    if isinstance(e, trio.Cancelled):
        return True
    if isinstance(e, BaseExceptionGroup):
        return all(_is_cancellation(x) for x in e.exceptions)
    return False


class Engine:
    def __init__(self, config: EngineSettings | None = None, store: StageStore | None = None, *,
                 executor: Executor | None = None, dispatch_fn: Dispatch | None = None) -> None:
        self.config = config if config is not None else settings().engine
        self.store = store or StageStore()
        ensure_stdlib(self.store)
        if store is None:  # a store of this home's own: upstream's store.json there comes in once
            import_home_store(self.store)
        conn = self.store.conn
        self.cache = PureCache(conn, max_entries=self.config.pure_cache_max_entries)
        self.runs = RunStore(conn, keep_runs=self.config.max_stored_runs, keep_bytes=self.config.max_stored_runs_bytes,
                             max_run_bytes=self.config.max_stored_run_bytes)
        self.kv = KvStore(conn)
        self.builtins: dict[str, Any] = {**kv_impls(self.kv), **store_impls(self.store, self.runs)}
        self._programs: ProgramRegistry | None = None
        self._executor = executor
        self._blocking_executor: Executor | None = None
        #: An executor given here (tests' in-memory ones) serves runs without a loop only
        #: if it says its ``execute`` never suspends (``never_suspends``).
        self._injected_executor = executor is not None
        self._dispatch = dispatch_fn or dispatch
        self._process_limiter: trio.CapacityLimiter | None = None
        self._thread_limiter: trio.CapacityLimiter | None = None
        self._facts: dict[str, StageFacts] = {}  # by stage ID: content-addressed, so never stale
        self._limits: Limits | None = None
        #: Keep warm sandboxes between runs (a daemon, which runs ``serve_warm``); else
        #: each run closes the idle ones as it ends (an embedded run is one process).
        self.keep_warm = False

    # ------------------------------------------------------------ what runs share

    @property
    def programs(self) -> ProgramRegistry:
        if self._programs is None:
            self._programs = ProgramRegistry(self.store.conn)
        return self._programs

    @property
    def executor(self) -> Executor:
        if NO_LOOP.get() and not self._injected_executor:
            # A run without an event loop (``run_without_loop``): the blocking twin.
            if self._blocking_executor is None:
                self._blocking_executor = BlockingExecutor(self.programs, profile=self.config.sandbox_profile)
            return self._blocking_executor
        if self._executor is None:
            remote = self.config.remote
            if self.config.executor == "remote":
                from noether_nix.remote.executor import RemoteExecutor

                self._executor = RemoteExecutor(msgspec.structs.replace(remote, profile=self.config.sandbox_profile))
            else:
                self._executor = LocalExecutor(self.programs, profile=self.config.sandbox_profile,
                                               threads=self.thread_limiter,
                                               warm_sandboxes=self.config.warm_sandboxes,
                                               warm_idle_s=self.config.warm_idle_secs)
        return self._executor

    @property
    def process_limiter(self) -> AbstractAsyncContextManager[Any]:
        if NO_LOOP.get():
            return UNLIMITED
        if self._process_limiter is None:
            self._process_limiter = trio.CapacityLimiter(self.config.process_concurrency)
        return self._process_limiter

    @property
    def thread_limiter(self) -> trio.CapacityLimiter | None:
        """Worker threads for work off the event loop; None without one (it is done inline)."""
        if NO_LOOP.get():
            return None
        if self._thread_limiter is None:
            self._thread_limiter = trio.CapacityLimiter(self.config.in_process_threads)
        return self._thread_limiter

    def facts(self, stage: Stage) -> StageFacts:
        found = self._facts.get(stage.id)
        if found is None:
            sandboxed = needs_sandbox(stage)
            kinds = set(stage.effects.kinds())
            cost = stage.effects.cost_cents()
            found = StageFacts(sandboxed=sandboxed, cost_cents=cost,
                               cacheable=sandboxed and EffectKind.PURE in kinds
                               and kinds <= {EffectKind.PURE, EffectKind.FALLIBLE},
                               fast=None if sandboxed or cost else _fast_pure(stage))
            self._facts[stage.id] = found
        return found

    def limits_for(self, options: RunOptions) -> Limits:
        """The engine's limits (its profile's, with the settings' overrides), lowered by the run's options."""
        if self._limits is None:
            self._limits = engine_limits(self.config, load_profile(self.config.sandbox_profile))
        base = self._limits
        # Asking for more than the ceiling is an error, never a silent cap.
        for asked, ceiling, flag, unit in ((options.timeout_secs, base.timeout_s, "timeout_secs", " s"),
                                           (options.max_output_bytes, base.max_output_bytes, "max_output_bytes",
                                            " bytes")):
            if asked is not None and asked > ceiling:
                raise NoetherError("invalid_limit", f"--{flag.replace('_', '-')} {asked:g} is over the {ceiling:g}{unit} "
                                   "maximum here: a run may lower the per-stage limit, not raise it",
                                   path=f"options.{flag}", exit_code=2,
                                   hint=f"ask for at most {ceiling:g}, or raise engine.{flag} in the settings "
                                        "(up to the sandbox profile's maximum)")
        return base.lowered(timeout_s=options.timeout_secs, max_output_bytes=options.max_output_bytes)

    # ------------------------------------------------------------ isolation

    def isolation_mode(self, options: RunOptions) -> Isolation:
        mode = options.isolate or self.config.isolation
        if mode not in ("auto", "bwrap", "none"):
            raise NoetherError("unknown_isolation", f"unknown isolation backend {mode!r} (use bwrap or none)",
                               exit_code=2)
        return "none" if mode == "none" else "bwrap"

    def isolation_available(self, options: RunOptions) -> bool:
        return self.isolation_mode(options) == "none" or sandbox_usable()

    # ------------------------------------------------------------ API

    def prepare(self, graph: Any, input: Any, options: RunOptions, *, check_input: bool = False) -> PreparedGraph:
        return self._prepare(graph, input, options, check_input=check_input)[0]

    def _prepare(self, graph: Any, input: Any, options: RunOptions, *,
                 check_input: bool = False) -> tuple[PreparedGraph, bool]:
        """``prepare``, and whether the input's check found it plain (``check_value``)."""
        check_grants(options)
        self.limits_for(options)  # a limit over the ceiling is refused before any graph work
        # A run's input is a value like any other: within the caps, and JSON.
        plain = check_value(input, self.config.max_value_bytes, what="the run's input", path="input")
        return prepare(graph, store=self.store, input=input, check_input=check_input, options=CheckOptions(
            allow_effects=options.allow_effects, allow_capabilities=options.allow_capabilities,
            budget_cents=options.budget_cents, allow_unsigned=options.allow_unsigned,
            isolation_available=self.isolation_available(options), optimize=options.optimize)), plain

    def check(self, graph: Any, input: Any, options: RunOptions) -> dict[str, Any]:
        return check_report(self.prepare(graph, input, options))

    async def run(self, graph: Any, input: Any, options: RunOptions, *, emit: Emit | None = None,
                  run_id: str | None = None, record: bool = True, run_as: RunAs | None = None,
                  store_writes: bool = True, requester_uid: int | None = None,
                  prepared: tuple[PreparedGraph, bool] | None = None) -> RunFinished:
        """Run a graph; ``record=False`` keeps it out of the run history
        (``stage test`` runs every example as a graph of its own).

        The daemon passes who asked: ``run_as`` is the host user its
        sandboxes run as, ``store_writes=False`` refuses the stages that
        change the store (``store_add``) and keeps ``trace_read`` and the kv
        table to the ``requester_uid``'s own part, under whose name the run
        is stored.

        A run ends only once everything it started is gone (its process
        host, every sandbox). Its last event is its ``RunFinished``, also
        when it is cancelled: that one is emitted, stored, and then the
        cancellation goes on.

        ``prepared``: what ``_prepare`` made of these very arguments (``run_without_loop``
        prepares before it knows which way the run goes)."""
        if prepared is None:
            # Checking a large graph or input takes seconds, and resolving through a registry waits
            # on the network (up to its timeout per reference): neither on the event loop.
            inline = small(graph) and small(input) and remote_source() is None
            prepared = await maybe_off_loop(inline, self._prepare, graph, input, options,
                                            limiter=self.thread_limiter)
        return await self._run(prepared[0], prepared[1], input, options, emit=emit, run_id=run_id, record=record,
                               run_as=run_as, store_writes=store_writes, requester_uid=requester_uid)

    async def _run(self, prepared: PreparedGraph, plain: bool, input: Any, options: RunOptions, *,
                   emit: Emit | None, run_id: str | None, record: bool, run_as: RunAs | None,
                   store_writes: bool, requester_uid: int | None) -> RunFinished:
        if self.isolation_mode(options) == "bwrap":  # root's sandboxes run as noether-sbx users: can they use the grants?
            check_grant_access(options.allow_read or [], writable=False, run_as=run_as, flag="--allow-read")
            check_grant_access(options.allow_write or [], writable=True, run_as=run_as, flag="--allow-write")
        run = Interpreter(self, self._dispatch, prepared, options, run_id=run_id or uuid.uuid4().hex, emit=emit,
                          isolation=self.isolation_mode(options), limits=self.limits_for(options),
                          policy=PolicyOptions(allow_effects=options.allow_effects,
                                               allow_capabilities=options.allow_capabilities,
                                               allow_unsigned=options.allow_unsigned,
                                               isolation_available=self.isolation_available(options)),
                          run_as=run_as, store_writes=store_writes, requester_uid=requester_uid)
        run.passed = Passed(input, None, plain)  # `prepare` checked it
        started_wall = datetime.now(UTC)
        started = time.monotonic()
        if record:
            self.runs.start(run.run_id, prepared.composition_id, requester_uid)
        if run.isolation == "none":
            log.warning("run_without_isolation", run_id=run.run_id)
        status: RunStatus = "ok"
        output: Any = None
        error: dict[str, Any] | None = None
        try:
            await run.emit(RunAccepted(run.run_id, composition_id=prepared.composition_id,
                                       started_at=started_wall.isoformat(), effects=prepared.effects.display()))
            for w in prepared.warnings:
                await run.emit(RunWarning(run.run_id, code=w.code, message=w.message, node_path=w.node_path))
            async with run.cleanup:  # the run's process host and the like: closed and waited for
                if not self.keep_warm and not NO_LOOP.get():
                    run.cleanup.push_async_callback(self.close_warm)
                output = await run.exec(prepared.root, input, "root")
            # Stage outputs are checked as they come; what Parallel, Let or Const put
            # together at the root is checked here (the last stage's own output, as it came, is not
            # checked twice).
            if output is not run.passed.value:
                await maybe_off_loop(small(output), self._check_output, output, limiter=self.thread_limiter)
        except NoetherError as e:
            status, error = "failed", e.to_dict()
            if e.code == "budget_exceeded":
                error["exit_code"] = 2
        except RecursionError:
            status, error = "failed", {"code": "value_too_deep", "path": "root",
                                       "message": "a value is nested too deeply to process"}
        except Exception as e:  # an engine bug: the run fails and says so, the daemon goes on
            log.exception("run_internal_error", run_id=run.run_id)
            status, error = "failed", {"code": "internal_error", "path": "root",
                                       "message": f"internal error: {type(e).__name__}: {e}"}
        except BaseException as e:
            stop = _stopped_by(e)
            if stop is not None:  # stored as cancelled, its last event sent (within a grace period), and on it goes
                with _shielded():
                    finished = self._finish(run, prepared, started, started_wall, "cancelled", None,
                                            {"code": "cancelled", "message": stop}, record)
                    if NO_LOOP.get():
                        await _emit_last(run, finished)
                    else:
                        with trio.move_on_after(_LAST_EVENT_GRACE_S):
                            await _emit_last(run, finished)
            raise
        if status != "ok":
            output = None  # a failed run has no output (not the one its root's check refused)
        # Storing a large output (measured, encoded, written) is work for a thread; the run
        # is stored once, so a cancellation waits for it.
        with _shielded():
            finished = await maybe_off_loop(small(output), self._finish, run, prepared, started, started_wall, status,
                                            output, error, record, limiter=self.thread_limiter)
        await _emit_last(run, finished)
        return finished

    def run_without_loop(self, graph: Any, input: Any, options: RunOptions, *, emit: Emit | None = None,
                         run_as: RunAs | None = None, store_writes: bool = True, requester_uid: int | None = None,
                         ) -> RunFinished | tuple[PreparedGraph, bool]:
        """Run a graph whose plan needs no event loop right here, without one (``engine.noloop``):
        its ``RunFinished``, as ``run`` would return it (the keywords are ``run``'s). Any other
        plan is not run: then what ``_prepare`` made of it, for ``run`` (on trio). Errors in
        preparing it are raised."""
        prepared = self._prepare(graph, input, options)
        if self.config.executor != "local" or not loop_free(prepared[0], self.facts):
            return prepared
        if self._injected_executor and not getattr(self._executor, "never_suspends", False):
            return prepared  # an executor given at construction that may wait on trio
        token = NO_LOOP.set(True)
        try:
            return drive(self.run(graph, input, options, emit=emit, prepared=prepared, run_as=run_as,
                                  store_writes=store_writes, requester_uid=requester_uid))
        finally:
            NO_LOOP.reset(token)

    def _check_output(self, output: Any) -> None:
        check_value(output, self.config.max_value_bytes, what="the run's output", path="root")

    def _finish(self, run: Interpreter, p: PreparedGraph, started: float, started_wall: datetime, status: RunStatus,
                output: Any, error: dict[str, Any] | None, record: bool) -> RunFinished:
        duration = int((time.monotonic() - started) * 1000)
        warnings = [w.message for w in p.warnings]
        trace: dict[str, Any] = {
            "composition_id": p.composition_id,
            "run_id": run.run_id,
            "started_at": started_wall.isoformat(),
            "duration_ms": duration,
            "status": "Ok" if status == "ok" else "Failed",
            "run_status": status,
            "stages": [dict(e, step_index=i) for i, e in enumerate(run.entries)],
            "warnings": warnings,
            "spent_cents": run.budget.spent_cents,
            "isolation": run.isolation,
        }
        if error:
            trace["error"] = error
        if run.dropped_entries or run.dropped_events:
            trace["dropped"] = {"entries": run.dropped_entries, "events": run.dropped_events}
        finished = RunFinished(run.run_id, composition_id=p.composition_id, status=status, output=output,
                               error=error, duration_ms=duration, spent_cents=run.budget.spent_cents, trace=trace,
                               warnings=warnings, effects=p.effects.display(),
                               cache={"hits": run.hits, "misses": run.misses})
        if record:
            # The stored events end with the same last event, its trace kept once (in the trace column).
            # The output of a run that went well passed ``check_value`` (at most max_value_bytes): it goes
            # in encoded (measured by its length), as the bytes its hash was taken of when the last stage's
            # output check kept them (a plain value: the same JSON, object keys sorted), else encoded here.
            last = msgspec.to_builtins(msgspec.structs.replace(finished, trace={}, output=None))
            if status == "ok" and output is not None:
                passed = run.passed
                encoded = passed.encoded if output is passed.value and passed.encoded is not None \
                    else msgspec.json.encode(output)
                last["output"] = msgspec.Raw(encoded)
            self.runs.finish(run.run_id, status, trace, [*run.events, last], run.budget.spent_cents)
        return finished

    # ------------------------------------------------------------ warm sandboxes

    async def close_warm(self) -> None:
        """Close the idle warm sandboxes (shielded: they are gone when this returns)."""
        if isinstance(self._executor, LocalExecutor):
            with trio.CancelScope(shield=True):
                await self._executor.close_idle()

    async def serve_warm(self) -> None:
        """Expire idle warm sandboxes until cancelled, then close them all (the daemon runs this)."""
        self.keep_warm = True
        executor = self.executor
        if not isinstance(executor, LocalExecutor):
            return
        executor.warm_after = 0  # a daemon: every program's first call goes warm
        pool = executor.warm_pool()
        if pool is None:
            return
        pool.warm_after = 0
        try:
            await pool.serve()
        finally:
            with trio.CancelScope(shield=True):
                await executor.aclose()

    def describe_warm(self) -> dict[str, Any] | None:
        return self._executor.describe_warm() if isinstance(self._executor, LocalExecutor) else None

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        return self.runs.get(run_id)

    def latest_trace(self, composition_id: str) -> dict[str, Any] | None:
        run = self.runs.latest(composition_id)
        return run["trace"] if run else None


def _shielded() -> AbstractContextManager[Any]:
    """Shielded from cancellation (there is none to shield from without an event loop)."""
    return contextlib.nullcontext() if NO_LOOP.get() else trio.CancelScope(shield=True)


async def _emit_last(run: Interpreter, finished: RunFinished) -> None:
    """The run's last event goes to its stream only (it is stored by ``_finish``)."""
    if run.emit_fn is not None:
        await run.emit_fn(finished)
