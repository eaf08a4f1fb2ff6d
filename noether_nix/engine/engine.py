"""The engine: runs prepared graphs on trio.

Parallel branches, Let bindings, Fanout targets and Merge sources run
concurrently, bounded by a run-wide and a process-wide capacity limiter.
Stages run in-process only when they are Pure stdlib stages (or the kv /
store stages the engine answers from its own state); everything else runs
its Nix-built program in a sandbox whose walls its effects derive. A stage
that cannot run is an error that says why — never an example's output.
"""

from __future__ import annotations

import contextvars
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog
import trio

from noether_nix.engine.budget import Budget
from noether_nix.engine.builtin import kv_impls, store_impls
from noether_nix.engine.config import EngineConfig
from noether_nix.engine.events import (
    Event,
    RunAccepted,
    RunFinished,
    RunWarning,
    StageFinished,
    StageOutput,
    StageStarted,
)
from noether_nix.errors import NoetherError
from noether_nix.graph.ast import (
    BranchNode,
    ConstNode,
    FanoutNode,
    LetNode,
    MergeNode,
    Node,
    ParallelNode,
    RemoteStageNode,
    RetryNode,
    SequentialNode,
    StageNode,
)
from noether_nix.graph.check import CheckOptions, PreparedGraph, check_report, prepare
from noether_nix.graph.preflight import PolicyOptions, is_stdlib, needs_sandbox
from noether_nix.model.effects import EffectKind, EffectSet, FsRead, FsWrite
from noether_nix.model.jcs import serde_compact, value_hash
from noether_nix.model.stage import Stage
from noether_nix.model.types import display, display_refinement
from noether_nix.model.values import check_refinement, outer_refinements
from noether_nix.stdlib._shapes import StageFailure, optional_text
from noether_nix.stdlib.registry import CATEGORY, PURE, ArrowUnavailable, stdlib_program
from noether_nix.store.cache import PureCache
from noether_nix.store.kv import KvStore
from noether_nix.store.runs import RunStore
from noether_nix.store.stages import StageStore
from noether_nix.store.stdlib_seed import ensure_stdlib

log = structlog.get_logger("noether.engine")

Emit = Callable[[Event], Awaitable[None]]
# Failures a retry cannot fix: the run's own rules refused the stage.
NOT_RETRYABLE = {"budget_exceeded", "effect_not_allowed", "isolation_unavailable", "isolation_required",
                 "no_implementation", "no_llm_provider", "arrow_unavailable", "cancelled"}
# The sandboxed caller behind RemoteStage (upstream's `noether build --serve` protocol).
REMOTE_CALL_CODE = """import json, urllib.request

def execute(call):
    body = json.dumps({"input": call["input"]}).encode()
    req = urllib.request.Request(call["url"], data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        resp = json.loads(r.read().decode())
    if isinstance(resp, dict) and resp.get("ok") is False:
        err = resp.get("error")
        raise RuntimeError(err if isinstance(err, str) else "remote reported ok=false without error message")
    try:
        return resp["data"]["output"]
    except (KeyError, TypeError):
        raise RuntimeError("response missing data.output field")
"""
CONFIG_INPUT_KEYS = ("items", "text", "data", "input", "records", "train", "document", "html", "csv", "json_str")


class RunOptions(msgspec.Struct, kw_only=True):
    budget_cents: int | None = None
    allow_effects: list[str] | None = None
    allow_capabilities: list[str] | None = None
    timeout_secs: float | None = None
    max_output_bytes: int | None = None
    isolate: str | None = None
    optimize: bool = True
    cache: bool = True
    allow_unsigned: bool = False
    refinement_checks: bool = True
    detach: bool = False
    #: Absolute paths (directories or files) read_file may read / write_file
    #: may write under; each stage sees only the granted path it needs.
    allow_read: list[str] | None = None
    allow_write: list[str] | None = None
    #: Environment variables env_get can see (nothing of the daemon's own).
    env: dict[str, str] | None = None
    #: The text stdin_read returns (the client's standard input).
    stdin: str | None = None


class RunResult(msgspec.Struct):
    run_id: str
    composition_id: str
    status: str
    output: Any
    error: dict[str, Any] | None
    spent_cents: int
    trace: dict[str, Any]
    warnings: list[str]
    effects: list[str]
    cache: dict[str, int]


# What one run keeps for its stored trace and replay (events are all streamed).
MAX_TRACE_ENTRIES = 200_000
MAX_STORED_EVENTS = 400_000
# Which attempt of the innermost enclosing Retry a stage runs in (1 outside any).
ATTEMPT: contextvars.ContextVar[int] = contextvars.ContextVar("noether_attempt", default=1)
# Upper bound on a Retry's attempts (the operator or the retry stage): each
# attempt is a traced stage run.
MAX_ATTEMPTS = 1000


class RetriesExhausted(Exception):
    def __init__(self, last: NoetherError) -> None:
        super().__init__(last.message)
        self.last = last


async def with_retries(attempt: Callable[[int], Awaitable[Any]], attempts: int, delay_ms: float | None) -> Any:
    """``attempt(1)``, ``attempt(2)``, … until one succeeds; a failure the run's
    own rules caused (``NOT_RETRYABLE``) is raised at once, and after the last
    attempt ``RetriesExhausted`` carries the last failure. Used by the Retry
    operator and the stdlib ``retry`` stage alike."""
    if attempts > MAX_ATTEMPTS:
        raise NoetherError("too_many_attempts", f"at most {MAX_ATTEMPTS} attempts, not {attempts}", exit_code=3)
    last: NoetherError | None = None
    for n in range(1, max(attempts, 1) + 1):
        # Every attempt lets trio run: a retry of a cheap in-process stage
        # stays cancellable and never starves the daemon's other work.
        await trio.lowlevel.checkpoint()
        token = ATTEMPT.set(n)  # numbers the attempt's stage events and trace entries
        try:
            return await attempt(n)
        except NoetherError as e:
            if e.code in NOT_RETRYABLE:
                raise
            last = e
            if n < attempts and delay_ms:
                await trio.sleep(delay_ms / 1000)
        finally:
            ATTEMPT.reset(token)
    assert last is not None
    raise RetriesExhausted(last)


class StageFacts(msgspec.Struct, frozen=True):
    """What the engine needs to know about a stage on every call, computed once."""

    sandboxed: bool
    #: Pure and worth remembering: in-process stdlib stages cost less than a lookup.
    cacheable: bool
    cost_cents: int


class StageError(NoetherError):
    def __init__(self, code: str, message: str, node_path: str, **kw: Any) -> None:
        super().__init__(code, message, path=node_path, exit_code=kw.pop("exit_code", 3), **kw)


class _Run:
    """State of one run: budget, limiter, trace entries, events."""

    def __init__(self, engine: Engine, prepared: PreparedGraph, options: RunOptions, run_id: str,
                 emit: Emit | None) -> None:
        self.engine = engine
        self.p = prepared
        self.options = options
        self.run_id = run_id
        self.emit_fn = emit
        self.budget = Budget(options.budget_cents)
        self.limiter = trio.CapacityLimiter(engine.config.run_concurrency)
        self.entries: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.hits = 0
        self.misses = 0
        self.isolation = engine.isolation_mode(options)
        self.policy = PolicyOptions(allow_effects=options.allow_effects,
                                    allow_capabilities=options.allow_capabilities,
                                    allow_unsigned=options.allow_unsigned,
                                    isolation_available=engine.isolation_available(options))
        self.resolved_refs: dict[str, Stage] = {}  # higher-order stage references, resolved once per run
        # The sandbox that owns the processes of this run's process stages, opened on first use.
        self.process_host: Any = None
        self.process_host_lock = trio.Lock()
        self.run_as: Any = None  # sandbox.supervisor.RunAs, set by Engine.run
        self.store_writes = True
        self.requester_uid: int | None = None
        self.dropped_entries = 0
        self.dropped_events = 0

    def record(self, entry: dict[str, Any]) -> None:
        """A trace entry; past ``MAX_TRACE_ENTRIES`` only counted (a map over
        millions of items must not hold millions of entries in the daemon)."""
        if len(self.entries) < MAX_TRACE_ENTRIES:
            self.entries.append(entry)
        else:
            self.dropped_entries += 1

    async def emit(self, ev: Event) -> None:
        # Every event is streamed; the stored copy (for replay) is bounded.
        if len(self.events) < MAX_STORED_EVENTS:
            self.events.append(msgspec.to_builtins(ev))
        else:
            self.dropped_events += 1
        if self.emit_fn is not None:
            await self.emit_fn(ev)

    # ------------------------------------------------------------ operators

    async def exec(self, node: Node, value: Any, path: str) -> Any:
        match node:
            case StageNode():
                stage = self.p.resolution.stage_for(node)
                return await self.run_stage(stage, _apply_config(value, node.config), path)
            case ConstNode(value=v):
                return v
            case SequentialNode(stages=ss):
                for i, s in enumerate(ss):
                    value = await self.exec(s, value, f"{path}.stages[{i}]")
                return value
            case ParallelNode(branches=bs):
                names = sorted(bs)
                inputs = [value[k] if isinstance(value, dict) and k in value else value for k in names]
                outs = await self.concurrently(
                    [(bs[k], inputs[i], f"{path}.branches.{k}") for i, k in enumerate(names)])
                return dict(zip(names, outs, strict=True))
            case BranchNode(predicate=pr, if_true=t, if_false=f):
                chosen = await self.exec(pr, value, f"{path}.predicate")
                if chosen is True:
                    return await self.exec(t, value, f"{path}.if_true")
                return await self.exec(f, value, f"{path}.if_false")
            case FanoutNode(source=s, targets=ts):
                src = await self.exec(s, value, f"{path}.source")
                return await self.concurrently([(t, src, f"{path}.targets[{i}]") for i, t in enumerate(ts)])
            case MergeNode(sources=ss, target=t):
                ins = [value[f"source_{i}"] if isinstance(value, dict) and f"source_{i}" in value else value
                       for i in range(len(ss))]
                outs = await self.concurrently([(s, ins[i], f"{path}.sources[{i}]") for i, s in enumerate(ss)])
                merged = {f"source_{i}": o for i, o in enumerate(outs)}
                return await self.exec(t, merged, f"{path}.target")
            case RetryNode(stage=s, max_attempts=n, delay_ms=d):
                return await self.retry(s, value, f"{path}.stage", max(n, 1), d)
            case LetNode(bindings=bs, body=b):
                names = sorted(bs)
                outs = await self.concurrently([(bs[k], value, f"{path}.bindings.{k}") for k in names])
                body_in = dict(value) if isinstance(value, dict) else {}
                body_in.update(zip(names, outs, strict=True))
                return await self.exec(b, body_in, f"{path}.body")
            case RemoteStageNode():
                return await self.remote(node, value, path)
        raise AssertionError(node)

    async def concurrently(self, jobs: list[tuple[Node, Any, str]]) -> list[Any]:
        return await self.gather(jobs, self.exec)

    async def gather(self, jobs: list[tuple[Any, Any, str]],
                     fn: Callable[[Any, Any, str], Awaitable[Any]]) -> list[Any]:
        """``fn(*job)`` for every job concurrently, results in job order; the
        first failure cancels the others and is the one raised."""
        results: list[Any] = [None] * len(jobs)

        async def one(i: int, node: Any, value: Any, path: str) -> None:
            results[i] = await fn(node, value, path)

        try:
            async with trio.open_nursery() as nursery:
                for i, (node, value, path) in enumerate(jobs):
                    nursery.start_soon(one, i, node, value, path)
        except BaseExceptionGroup as group:
            # The first failure cancelled its siblings; report that failure.
            first = _first_error(group)
            raise first from None
        return results

    async def retry(self, node: Node, value: Any, path: str, attempts: int, delay_ms: int | None) -> Any:
        async def attempt(_n: int) -> Any:
            return await self.exec(node, value, path)

        try:
            return await with_retries(attempt, attempts, delay_ms)
        except RetriesExhausted as e:
            raise StageError("retry_exhausted", f"retry exhausted after {attempts} attempts: {e.last.message}",
                             path, details={"last_error": e.last.to_dict()}) from None

    async def remote(self, node: RemoteStageNode, value: Any, path: str) -> Any:
        """POST ``{"input": value}`` to the node's URL from a sandbox with the
        network: the daemon itself never makes the call."""
        from noether_nix.model.effects import EffectSet, Fallible, Network
        from noether_nix.model.values import conforms

        stage_id = "remote-call-" + value_hash(REMOTE_CALL_CODE)[:52]
        label = f"RemoteStage {node.url}"
        await self.emit(StageStarted(self.run_id, attempt=ATTEMPT.get(), node_path=path, stage_id=stage_id, name=label))
        started = time.monotonic()
        usage: dict[str, Any] = {}
        try:
            async with self.limiter, self.engine.process_limiter:
                out = await self.engine.run_program(
                    stage_id, "python", REMOTE_CALL_CODE, EffectSet.of([Network(), Fallible()]),
                    {"url": node.url, "input": value}, path, self, usage, label)
            err = conforms(out, node.output, "output")
            if err:
                raise StageError("remote_output_mismatch", f"{label} returned a value that is not "
                                 f"{display(node.output)}: {err}", path)
        except NoetherError as e:
            await self.emit(StageFinished(self.run_id, attempt=ATTEMPT.get(), node_path=path, stage_id=stage_id, name=label,
                                          status=usage.get("status", "error"), message=e.message,
                                          wall_ms=int((time.monotonic() - started) * 1000)))
            raise
        wall = int((time.monotonic() - started) * 1000)
        await self.emit(StageFinished(self.run_id, attempt=ATTEMPT.get(), node_path=path, stage_id=stage_id, name=label, status="ok",
                                      wall_ms=wall, isolation=usage.get("isolation"),
                                      input_hash=value_hash(value), output_hash=value_hash(out)))
        return out

    # ------------------------------------------------------------ one stage

    async def run_stage(self, stage: Stage, value: Any, path: str) -> Any:
        opts = self.options
        checks = opts.refinement_checks and self.engine.config.refinement_checks
        in_hash = value_hash(value)
        if checks:
            for r in outer_refinements(stage.input):
                why = check_refinement(r, value)
                if why:
                    raise StageError("refinement_violation",
                                     f"stage {stage.label()}: input refinement violation "
                                     f"({display_refinement(r)}): {why}", path)
        facts = self.engine.facts(stage)
        cacheable = opts.cache and self.engine.config.pure_cache and facts.cacheable
        if cacheable:
            hit, out = self.engine.cache.get(stage.id, in_hash)
            if hit:
                self.hits += 1
                await self.emit(StageFinished(self.run_id, attempt=ATTEMPT.get(), node_path=path, stage_id=stage.id, name=stage.name,
                                              status="cached", cached=True, input_hash=in_hash,
                                              output_hash=value_hash(out)))
                self.record(_entry(stage, path, "Ok", 0, in_hash, value_hash(out), cached=True))
                return out
            self.misses += 1
        cost = facts.cost_cents
        if cost:
            self.budget.reserve(cost, stage=stage.label(), node_path=path)
        await self.emit(StageStarted(self.run_id, attempt=ATTEMPT.get(), node_path=path, stage_id=stage.id, name=stage.name))
        started = time.monotonic()
        usage: dict[str, Any] = {}
        try:
            if not facts.sandboxed:
                # In-process, or (higher-order) only runs other stages, which
                # take their own slots; a slot would only add a trio checkpoint.
                out = await self.engine.dispatch(stage, value, path, self, usage)
            else:
                async with self.limiter, self.engine.process_limiter:
                    out = await self.engine.dispatch(stage, value, path, self, usage)
            if checks:
                for r in outer_refinements(stage.output):
                    why = check_refinement(r, out)
                    if why:
                        raise StageError("refinement_violation",
                                         f"stage {stage.label()}: output refinement violation "
                                         f"({display_refinement(r)}): {why}", path)
        except NoetherError as e:
            wall = int((time.monotonic() - started) * 1000)
            await self.emit(StageFinished(self.run_id, attempt=ATTEMPT.get(), node_path=path, stage_id=stage.id, name=stage.name,
                                          status=usage.get("status", "error"), wall_ms=wall, spent_cents=cost,
                                          input_hash=in_hash, message=e.message,
                                          build_ms=usage.get("build_ms"), isolation=usage.get("isolation")))
            self.record(_entry(stage, path, {"Failed": {"code": e.code, "message": e.message}}, wall,
                                       in_hash, None, spent_cents=cost, **_extra(usage)))
            raise
        wall = int((time.monotonic() - started) * 1000)
        out_hash = value_hash(out)
        if cacheable:
            self.engine.cache.put(stage.id, in_hash, out)
        await self.emit(StageFinished(self.run_id, attempt=ATTEMPT.get(), node_path=path, stage_id=stage.id, name=stage.name,
                                      status="ok", wall_ms=wall, cpu_ms=usage.get("cpu_ms"),
                                      max_rss_kb=usage.get("max_rss_kb"), build_ms=usage.get("build_ms"),
                                      spent_cents=cost, input_hash=in_hash, output_hash=out_hash,
                                      isolation=usage.get("isolation")))
        self.record(_entry(stage, path, "Ok", wall, in_hash, out_hash, spent_cents=cost, **_extra(usage)))
        return out


def _abs_norm(path: str) -> str:
    """An absolute path normalised, "//x" (which POSIX normpath keeps) as "/x"."""
    import posixpath

    return posixpath.normpath("/" + path.lstrip("/"))


def check_grants(options: RunOptions) -> None:
    """Refuse, before anything runs, a file grant no sandbox may get."""
    import os

    from noether_nix.sandbox.env import check_env
    from noether_nix.sandbox.policy import bind_refusal

    check_env(options.env, where="--env")
    for flag, grants, writable in (("--allow-read", options.allow_read, False),
                                   ("--allow-write", options.allow_write, True)):
        for grant in grants or []:
            if not os.path.isabs(grant):
                raise NoetherError("invalid_grant", f"{grant!r} must be an absolute path", path=flag, exit_code=2)
            root = _abs_norm(grant)
            if not os.path.exists(root):
                raise NoetherError("invalid_grant", f"{root} does not exist (a grant binds an existing path)",
                                   path=flag, exit_code=2)
            why = bind_refusal(root, writable=writable)
            if why is not None:
                raise NoetherError("invalid_grant", f"cannot grant {root}: {why}", path=flag, exit_code=2)


def _fs_grant(stage: Stage, value: Any, options: RunOptions, path: str) -> FsRead | FsWrite:
    """The wall read_file / write_file gets: the granted path (``allow_read`` /
    ``allow_write``) that holds the file the input names, or a refusal."""
    import os

    writes = stage.name == "write_file"
    want = value.get("path") if isinstance(value, dict) else None
    if not isinstance(want, str):
        raise StageError("stage_failed", f"stage {stage.label()}: 'path' must be text, got {want!r}", path)
    if not os.path.isabs(want):
        # The sandbox has no working directory of the client's to resolve it against.
        raise StageError("path_not_granted", f"stage {stage.label()}: relative path {want!r} cannot be granted; "
                         "give an absolute path", path)
    target = _abs_norm(want)
    grants = (options.allow_write or []) if writes else [*(options.allow_read or []), *(options.allow_write or [])]
    for grant in grants:
        root = _abs_norm(grant)
        if os.path.isabs(root) and (target == root or target.startswith(root.rstrip("/") + "/")):
            if not os.path.exists(root):
                # The wall is a bind of the granted path itself, which must exist.
                raise StageError("path_not_found", f"stage {stage.label()}: granted path {root} does not exist "
                                 "(grant an existing directory that holds it)", path)
            return FsWrite(path=root) if writes else FsRead(path=root)
    flag = "--allow-write" if writes else "--allow-read"
    raise StageError("path_not_granted", f"stage {stage.label()} would {'write' if writes else 'read'} {target}, "
                     f"which this run does not grant (grant it, or a directory above it, with {flag})", path,
                     hint=f"{flag} {os.path.dirname(target)}")


def _extra(usage: dict[str, Any]) -> dict[str, Any]:
    return {k: usage[k] for k in ("cpu_ms", "max_rss_kb", "build_ms", "isolation") if k in usage}


def _entry(stage: Stage, path: str, status: Any, wall: int, in_hash: str, out_hash: str | None,
           **extra: Any) -> dict[str, Any]:
    return {"stage_id": stage.id, "node_path": path, "name": stage.name, "status": status, "attempt": ATTEMPT.get(),
            "duration_ms": wall, "input_hash": in_hash, "output_hash": out_hash, **extra}


def _first_error(group: BaseExceptionGroup) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if not isinstance(exc, trio.Cancelled):
            return exc
    return group.exceptions[0]


def sandbox_usable() -> bool:
    """Whether bwrap is installed and can create its namespaces here."""
    from noether_nix.sandbox.bwrap import bwrap_works, find_bwrap

    path = find_bwrap()
    return path is not None and bwrap_works(path)[0]


def _is_cancellation(e: BaseException) -> bool:
    if isinstance(e, trio.Cancelled):
        return True
    if isinstance(e, BaseExceptionGroup):
        return all(_is_cancellation(x) for x in e.exceptions)
    return False


def _apply_config(value: Any, config: dict[str, Any] | None) -> Any:
    """Upstream's config merge (spec §5.4)."""
    if not config:
        return value
    if isinstance(value, dict):
        return {**value, **config}
    key = next((k for k in CONFIG_INPUT_KEYS if k not in config), "items")
    return {key: value, **config}


class Engine:
    def __init__(self, config: EngineConfig | None = None, store: StageStore | None = None) -> None:
        self.config = config or EngineConfig()
        self.store = store or StageStore()
        ensure_stdlib(self.store)
        conn = self.store.conn
        self.cache = PureCache(conn, max_entries=self.config.pure_cache_max_entries)
        self.runs = RunStore(conn)
        self.kv = KvStore(conn)
        self.builtins = {**kv_impls(self.kv), **store_impls(self.store, self.runs)}
        self.read_trace: Any = self.builtins["trace_read"]  # takes visible_to=
        self._process_limiter: trio.CapacityLimiter | None = None
        self._programs: Any = None
        self._facts: dict[str, StageFacts] = {}  # by stage ID: content-addressed, so never stale

    def facts(self, stage: Stage) -> StageFacts:
        found = self._facts.get(stage.id)
        if found is None:
            sandboxed = needs_sandbox(stage)
            kinds = set(stage.effects.kinds())
            found = StageFacts(sandboxed=sandboxed, cost_cents=stage.effects.cost_cents(),
                               cacheable=sandboxed and EffectKind.PURE in kinds
                               and kinds <= {EffectKind.PURE, EffectKind.FALLIBLE})
            self._facts[stage.id] = found
        return found

    @property
    def process_limiter(self) -> trio.CapacityLimiter:
        if self._process_limiter is None:
            self._process_limiter = trio.CapacityLimiter(self.config.process_concurrency)
        return self._process_limiter

    @property
    def programs(self) -> Any:
        if self._programs is None:
            from noether_nix.nix.registry import ProgramRegistry

            self._programs = ProgramRegistry(self.store.conn)
        return self._programs

    # ------------------------------------------------------------ isolation

    def isolation_mode(self, options: RunOptions) -> str:
        mode = options.isolate or self.config.isolation
        if mode not in ("auto", "bwrap", "none"):
            raise NoetherError("unknown_isolation", f"unknown isolation backend {mode!r} (use bwrap or none)",
                               exit_code=2)
        return "none" if mode == "none" else "bwrap"

    def isolation_available(self, options: RunOptions) -> bool:
        return self.isolation_mode(options) == "none" or sandbox_usable()

    # ------------------------------------------------------------ API

    def prepare(self, graph: Any, input: Any, options: RunOptions, *, check_input: bool = False) -> PreparedGraph:
        check_grants(options)
        return prepare(graph, store=self.store, input=input, check_input=check_input, options=CheckOptions(
            allow_effects=options.allow_effects, allow_capabilities=options.allow_capabilities,
            budget_cents=options.budget_cents, allow_unsigned=options.allow_unsigned,
            isolation_available=self.isolation_available(options), optimize=options.optimize))

    def check(self, graph: Any, input: Any, options: RunOptions) -> dict[str, Any]:
        return check_report(self.prepare(graph, input, options))

    async def run(self, graph: Any, input: Any, options: RunOptions, *, emit: Emit | None = None,
                  run_id: str | None = None, record: bool = True, run_as: Any = None,
                  store_writes: bool = True, requester_uid: int | None = None) -> RunResult:
        """Run a graph; ``record=False`` keeps it out of the run history
        (``stage test`` runs every example as a graph of its own).

        The daemon passes who asked: ``run_as`` (a ``sandbox.supervisor.RunAs``)
        is the host user its sandboxes run as, ``store_writes=False`` refuses
        the stages that change the store (``store_add``) and keeps
        ``trace_read`` to the ``requester_uid``'s own runs, under whose name
        the run is stored."""
        prepared = self.prepare(graph, input, options)
        if self.isolation_mode(options) == "bwrap":  # root's sandboxes run as noether-sbx users: can they use the grants?
            from noether_nix.sandbox.identity import check_grant_access

            check_grant_access(options.allow_read or [], writable=False, run_as=run_as, flag="--allow-read")
            check_grant_access(options.allow_write or [], writable=True, run_as=run_as, flag="--allow-write")
        run = _Run(self, prepared, options, run_id or uuid.uuid4().hex, emit)
        run.run_as, run.store_writes, run.requester_uid = run_as, store_writes, requester_uid
        started_wall = datetime.now(UTC)
        started = time.monotonic()
        if record:
            self.runs.start(run.run_id, prepared.composition_id, requester_uid)
        if run.isolation == "none":
            log.warning("run_without_isolation", run_id=run.run_id)
        await run.emit(RunAccepted(run.run_id, composition_id=prepared.composition_id,
                                   started_at=started_wall.isoformat(), effects=prepared.effects.display()))
        for w in prepared.warnings:
            await run.emit(RunWarning(run.run_id, code=w.code, message=w.message, node_path=w.node_path))
        status, output, error = "ok", None, None
        try:
            try:
                output = await run.exec(prepared.root, input, "root")
            finally:
                if run.process_host is not None:  # the run's spawned processes end with it
                    await run.process_host.aclose()
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
            if _is_cancellation(e):
                status, error = "cancelled", {"code": "cancelled", "message": "the run was cancelled"}
                with trio.CancelScope(shield=True):
                    self._finish(run, prepared, started, started_wall, status, output, error, record)
            raise
        return self._finish(run, prepared, started, started_wall, status, output, error, record)

    def _finish(self, run: _Run, p: PreparedGraph, started: float, started_wall: datetime, status: str,
                output: Any, error: dict[str, Any] | None, record: bool = True) -> RunResult:
        duration = int((time.monotonic() - started) * 1000)
        trace = {
            "composition_id": p.composition_id,
            "run_id": run.run_id,
            "started_at": started_wall.isoformat(),
            "duration_ms": duration,
            "status": "Ok" if status == "ok" else "Failed",
            "run_status": status,
            "stages": [dict(e, step_index=i) for i, e in enumerate(run.entries)],
            "warnings": [w.message for w in p.warnings],
            "spent_cents": run.budget.spent_cents,
            "isolation": run.isolation,
        }
        if error:
            trace["error"] = error
        if run.dropped_entries or run.dropped_events:
            trace["dropped"] = {"entries": run.dropped_entries, "events": run.dropped_events}
        finished = RunFinished(run.run_id, status=status, duration_ms=duration,  # type: ignore[arg-type]
                               spent_cents=run.budget.spent_cents, output=output, error=error)
        run.events.append(msgspec.to_builtins(finished))
        if record:
            self.runs.finish(run.run_id, status, trace, run.events, run.budget.spent_cents)
        return RunResult(run_id=run.run_id, composition_id=p.composition_id, status=status, output=output,
                         error=error, spent_cents=run.budget.spent_cents, trace=trace,
                         warnings=[w.message for w in p.warnings], effects=p.effects.display(),
                         cache={"hits": run.hits, "misses": run.misses})

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        return self.runs.get(run_id)

    def latest_trace(self, composition_id: str) -> dict[str, Any] | None:
        run = self.runs.latest(composition_id)
        return run["trace"] if run else None

    # ------------------------------------------------------------ dispatch

    async def dispatch(self, stage: Stage, value: Any, path: str, run: _Run, usage: dict[str, Any]) -> Any:
        if is_stdlib(stage):
            return await self._dispatch_stdlib(stage, value, path, run, usage)
        if stage.implementation_code is not None and stage.implementation_language:
            return await self._dispatch_sandboxed(stage, stage.implementation_language,
                                                  stage.implementation_code, value, path, run, usage)
        raise StageError("no_implementation", f"stage {stage.label()} has no implementation this engine can "
                         "run (no code, and not a stdlib stage)", path)

    async def _dispatch_stdlib(self, stage: Stage, value: Any, path: str, run: _Run, usage: dict[str, Any]) -> Any:
        """By how the stage runs (``stdlib.registry.CATEGORY``), not by its
        declared effects: upstream's write_file declares only Fallible."""
        name = stage.name or ""
        category = CATEGORY.get(name)
        if category in ("pure", "kv", "store", "stream"):
            usage["isolation"] = "in-process"
        try:
            if category == "pure":
                return PURE[name](value)
            if category in ("kv", "store"):
                if name == "store_add" and not run.store_writes:
                    raise StageError("forbidden", f"stage {stage.label()}: whoever started this run may not add "
                                     "stages to the store", path)
                if name == "trace_read" and not run.store_writes:  # only the requester's own traces
                    return self.read_trace(value, visible_to=run.requester_uid)
                if category == "kv" and not run.store_writes and isinstance(value, dict):
                    # A peer's kv keys live in its own namespace: it can neither read nor
                    # overwrite another peer's (or the trusted users') values.
                    ns = optional_text(value, "namespace")
                    value = {**value, "namespace": f"peer-{run.requester_uid}/{ns or ''}"}
                return self.builtins[name](value)
            if category == "stream":
                return await self._stream(stage, value, path, run)
        except StageFailure as e:
            raise StageError("stage_failed", f"stage {stage.label()} failed: {e}", path) from None
        except StageError:
            raise
        except NoetherError as e:
            raise StageError("stage_failed", f"stage {stage.label()} failed: {e.message}", path) from None
        if category == "higher_order":
            from noether_nix.engine.higher_order import run_higher_order

            return await run_higher_order(run, stage, value, path)
        if category in ("sandboxed", "arrow"):
            try:
                program = stdlib_program(stage.id, name)
            except ArrowUnavailable:
                raise StageError("arrow_unavailable", f"stage {stage.label()} needs Apache Arrow: install the "
                                 "extra with `pip install 'noether-nix[arrow]'` where the daemon runs", path) from None
            assert program is not None
            effects, env = stage.effects, None
            if name in ("read_file", "write_file"):
                effects = EffectSet.of([*stage.effects.effects, _fs_grant(stage, value, run.options, path)])
            elif name == "env_get":
                env = dict(run.options.env or {})
            # Arrow IPC bytes, like everything here, are parsed in the sandbox, never in the daemon.
            return await self.run_program(program[0], "python", program[1], effects, value, path, run, usage,
                                          f"stage {stage.label()}", env=env, clear_env=name == "env_get")
        if category == "llm":
            raise StageError("no_llm_provider", f"stage {stage.label()} needs an LLM provider, and this "
                             "noether-nix ships none: it would need an \"llm\" entry in the daemon configuration "
                             "({\"provider\", \"model\", \"api_key_file\"}) and a provider behind it, which this "
                             "version does not have", path)
        if category == "process":
            return await self._process_stage(stage, name, value, path, run, usage)
        raise StageError("no_implementation", f"stdlib stage {stage.label()} has no implementation in this "
                         "version of noether-nix; it will not be faked", path)

    async def _process_stage(self, stage: Stage, name: str, value: Any, path: str, run: _Run,
                             usage: dict[str, Any]) -> Any:
        """spawn/wait/signal/kill_process, answered by the run's process host:
        one sandbox (walls from the Process effect: the Nix store and nothing
        else) that lives as long as the run, so a pid one stage returns means
        something to the next. Its processes die when the run ends."""
        limits = self.limits_for(run.options)
        if name == "wait_process" and isinstance(value, dict):
            if value.get("timeout_ms") is None:
                # Upstream's default wait is 30 s; it must end before the stage's own timeout.
                value = {**value, "timeout_ms": min(30_000, max(0, int(limits.timeout_s * 1000) - 1000))}
            wait_ms = value.get("timeout_ms")
            if isinstance(wait_ms, (int, float)) and not isinstance(wait_ms, bool) and wait_ms / 1000 >= limits.timeout_s:
                raise StageError("stage_failed", f"stage {stage.label()}: timeout_ms {wait_ms:g} is not under this "
                                 f"run's per-stage timeout of {limits.timeout_s:g} s", path)
        async with run.process_host_lock:
            if run.process_host is None:
                run.process_host = await self._open_process_host(stage, limits, run)
        host = run.process_host
        usage["isolation"] = host.isolation
        answer = await host.request({"op": name, "input": value}, timeout_s=limits.timeout_s)
        if not isinstance(answer, dict) or ("ok" not in answer and "error" not in answer):
            raise StageError("stage_protocol_error", f"stage {stage.label()}: the process host answered {answer!r}",
                             path)
        if "error" in answer:
            raise StageError("stage_failed", f"stage {stage.label()} failed: {answer['error']}", path)
        return answer["ok"]

    async def _open_process_host(self, stage: Stage, limits: Any, run: _Run) -> Any:
        from noether_nix.nix.programs import store_closure
        from noether_nix.nix.runtime import ensure_runtime
        from noether_nix.sandbox.policy import policy_from_effects
        from noether_nix.sandbox.profile import load_profile
        from noether_nix.sandbox.session import open_session
        from noether_nix.sandbox.supervisor import Isolation
        from noether_nix.stdlib.registry import process_host_source

        python = await trio.to_thread.run_sync(ensure_runtime, "python")
        bash = await trio.to_thread.run_sync(ensure_runtime, "bash")  # everyday tools for spawned commands
        profile = load_profile(self.config.sandbox_profile)
        closure = await trio.to_thread.run_sync(
            lambda: sorted({*store_closure(python.store_path), *store_closure(bash.store_path)}))
        policy = policy_from_effects(stage.effects, profile=profile, store_paths=closure)
        env = {"PATH": f"{bash.store_path}/bin:{python.store_path}/bin"}
        return await open_session([python.interpreter, "-I", "-S", "-c", process_host_source()], policy=policy,
                                  limits=limits, isolation=Isolation(run.isolation), profile=profile,  # type: ignore[arg-type]
                                  env=env, run_as=run.run_as)

    async def _stream(self, stage: Stage, value: Any, path: str, run: _Run) -> Any:
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

    def limits_for(self, options: RunOptions) -> Any:
        from noether_nix.sandbox.policy import Limits

        c = self.config
        base = Limits(timeout_s=c.timeout_secs, max_output_bytes=c.max_output_bytes,
                      max_stderr_bytes=c.max_stderr_bytes, memory_bytes=c.memory_bytes, max_pids=c.max_pids)
        return base.lowered(timeout_s=options.timeout_secs, max_output_bytes=options.max_output_bytes)

    async def _dispatch_sandboxed(self, stage: Stage, language: str, code: str, value: Any, path: str, run: _Run,
                                  usage: dict[str, Any]) -> Any:
        return await self.run_program(stage.id, language, code, stage.effects, value, path, run, usage,
                                      f"stage {stage.label()}")

    async def run_program(self, program_id: str, language: str, code: str, effects: Any, value: Any, path: str,
                          run: _Run, usage: dict[str, Any], label: str, *, env: dict[str, str] | None = None,
                          clear_env: bool = False) -> Any:
        """Build (once) and run a program in a sandbox whose walls ``effects`` derive."""
        from noether_nix.nix.programs import build_stage_program_async, store_closure
        from noether_nix.sandbox.policy import policy_from_effects
        from noether_nix.sandbox.profile import load_profile
        from noether_nix.sandbox.supervisor import Isolation, run_sandboxed

        program = await build_stage_program_async(program_id, language, code, registry=self.programs,
                                                  concurrency=self.config.build_concurrency)
        if program.built:
            usage["build_ms"] = program.build_ms
        profile = load_profile(self.config.sandbox_profile)
        closure = program.closure or await trio.to_thread.run_sync(store_closure, program.store_path)
        policy = policy_from_effects(effects, profile=profile, store_paths=closure)
        if clear_env:  # env_get sees exactly the run's variables, none of the daemon's
            policy = msgspec.structs.replace(policy, env_allowlist=[])
        result = await run_sandboxed(program.argv, policy=policy, limits=self.limits_for(run.options),
                                     stdin=serde_compact(value), isolation=Isolation(run.isolation),  # type: ignore[arg-type]
                                     profile=profile, env=env, run_as=run.run_as)
        usage.update(status=result.status.value, cpu_ms=result.cpu_ms, max_rss_kb=result.max_rss_kb,
                     isolation=result.isolation)
        if result.ok:
            return result.output
        detail = result.stderr_tail.strip().splitlines()[-1] if result.stderr_tail.strip() else ""
        message = result.message if result.status.value != "error" else f"exited with status {result.exit_code}"
        if detail and detail not in message:
            message += f": {detail}"
        raise StageError(f"stage_{result.status.value}", f"{label} failed: {message}", path,
                         details={"status": result.status.value, "stderr_tail": result.stderr_tail[-2000:]})
