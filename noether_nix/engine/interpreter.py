"""The graph interpreter: one run of a prepared graph on trio.

Parallel branches, Let bindings, Fanout targets and Merge sources run
concurrently, bounded by a run-wide and a process-wide capacity limiter.
Each Stage node goes through ``run_stage`` (refinements, the pure cache,
the budget, events and the trace entry) and then the injected ``dispatch``,
which knows how stages run; the interpreter does not.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, NamedTuple

import msgspec

from noether_nix.deferred import trio
from noether_nix.engine.boundary import check_output
from noether_nix.engine.budget import Budget
from noether_nix.engine.events import Event, RunWarning, StageFinished, StageStarted
from noether_nix.engine.executor import StageCall, outcome_value
from noether_nix.engine.fastcall import timed_call
from noether_nix.engine.fastpath import LONG_SEQUENTIAL, FastPure, Summary
from noether_nix.engine.noloop import NO_LOOP, UNLIMITED
from noether_nix.engine.offload import maybe_off_loop, off_loop, small
from noether_nix.engine.options import (
    ATTEMPT,
    Isolation,
    RetriesExhausted,
    RunOptions,
    StageError,
    with_retries,
)
from noether_nix.engine.state import Dispatch, Services, Usage
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
from noether_nix.graph.check import PreparedGraph
from noether_nix.graph.preflight import REMOTE_EFFECTS, PolicyOptions
from noether_nix.model.jcs import serde_compact, sha256_hex, value_hash
from noether_nix.model.stage import Stage
from noether_nix.model.types import display, display_refinement
from noether_nix.model.values import check_refinement, check_value, conforms, outer_refinements
from noether_nix.sandbox.identity import RunAs
from noether_nix.sandbox.policy import Limits
from noether_nix.stdlib.registry import remote_call_program
from noether_nix.store.cache import cache_namespace

Emit = Callable[[Event], Awaitable[None]]
CONFIG_INPUT_KEYS = ("items", "text", "data", "input", "records", "train", "document", "html", "csv", "json_str")
# What one run keeps for its stored trace and replay (events are all streamed).
MAX_TRACE_ENTRIES = 200_000
MAX_STORED_EVENTS = 400_000


class Interpreter:
    """State of one run (budget, limiter, trace entries, events) and its operators."""

    def __init__(self, services: Services, dispatch: Dispatch, prepared: PreparedGraph, options: RunOptions, *,
                 run_id: str, emit: Emit | None, isolation: Isolation, policy: PolicyOptions, limits: Limits,
                 run_as: RunAs | None = None, store_writes: bool = True, requester_uid: int | None = None) -> None:
        self.services = services
        self.dispatch = dispatch
        self.p = prepared
        self.options = options
        self.run_id = run_id
        self.emit_fn = emit
        self.isolation = isolation
        self.policy = policy
        self.limits = limits
        self.run_as = run_as
        self.store_writes = store_writes
        self.requester_uid = requester_uid
        self.budget = Budget(options.budget_cents)
        # Without an event loop (``engine.noloop``) a run has one stage at a time: nothing to bound.
        no_loop = NO_LOOP.get()
        self.limiter: AbstractAsyncContextManager[Any] = \
            UNLIMITED if no_loop else trio.CapacityLimiter(services.config.run_concurrency)
        self.entries: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.hits = 0
        self.misses = 0
        self.resolved_refs: dict[str, Stage] = {}
        self.cleanup = contextlib.AsyncExitStack()
        self.resource_lock: AbstractAsyncContextManager[Any] = UNLIMITED if no_loop else trio.Lock()
        self.resources: dict[str, Any] = {}
        self.dropped_entries = 0
        self.dropped_events = 0
        self.checks = options.refinement_checks and services.config.refinement_checks
        self.output_checks = options.output_type_checks and services.config.output_type_checks
        #: The pure cache is shared by the daemon's writers; every other peer has its own.
        self.cache_namespace = cache_namespace(store_writes, requester_uid)
        #: The value that last passed ``check_value`` as a stage's output or as the run's
        #: input and was not handed to a stage since (``Passed``). One tuple, read and
        #: replaced whole (worker threads check values too).
        self.passed = NOTHING_PASSED
        #: Large values this run has checked and hashed, by identity: ``id → (value, hash,
        #: size)``. A Parallel or Fanout hands one value to every branch, and each branch's
        #: input and output (``identity`` returns it) was checked and hashed again: 1,000
        #: branches over a 1 MiB text took 6.6 s, 200 over an 8 MiB list 17.7 s. Only values
        #: worked on off the event loop (over ``INLINE_MAX_BYTES``) are remembered. Texts are
        #: immutable; lists and records are never changed in place once checked — no engine
        #: operator and no in-process stage does (``tests/stdlib/test_pure_examples.py``),
        #: and a sandboxed stage gets a copy — which ``Passed`` relies on too. The oldest go
        #: past ``KNOWN_VALUES`` or once they hold more than one value's worth of memory
        #: (``size``, ``_known_size``): a run must not keep alive values it has passed on (a
        #: chain of stages each making a new 32 MiB text kept the last 16).
        self.known_values: dict[int, tuple[Any, str, int]] = {}
        self.known_bytes = 0
        self._known_budget = services.config.max_value_bytes + KNOWN_SLACK
        self._known_lock = threading.Lock()

    def known_value(self, value: Any) -> str | None:
        """The hash of ``value`` if this run checked this very (large) value already."""
        seen = self.known_values.get(id(value))
        if seen is not None and seen[0] is value:
            return seen[1]
        return None

    def know_value(self, value: Any, value_hash: str, size: int) -> None:
        """Remember a large value (``size`` as ``known_values`` counts it) as checked, with its hash."""
        if size > self._known_budget or type(value) not in (str, list, dict):
            return
        with self._known_lock:  # worker threads check values too
            known = self.known_values
            seen = known.get(id(value))
            if seen is not None and seen[0] is value:
                return
            while known and (len(known) >= KNOWN_VALUES or self.known_bytes + size > self._known_budget):
                self.known_bytes -= known.pop(next(iter(known)))[2]
            known[id(value)] = (value, value_hash, size)
            self.known_bytes += size

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
                if len(ss) >= LONG_SEQUENTIAL and self.options.trace == "summary":
                    return await self.long_sequential(ss, value, path)
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

    async def long_sequential(self, ss: list[Node], value: Any, path: str) -> Any:
        """A long Sequential: each run of two or more consecutive Pure stdlib stages on the
        fast path (``engine.fastpath``), one summary trace entry per run; the rest as usual."""
        i = 0
        while i < len(ss):
            run: list[tuple[StageNode, Stage, FastPure]] = []
            while i + len(run) < len(ss):
                node = ss[i + len(run)]
                if not isinstance(node, StageNode):
                    break
                stage = self.p.resolution.stage_for(node)
                fast = self.services.facts(stage).fast
                if fast is None:
                    break
                run.append((node, stage, fast))
            if len(run) >= 2:
                value = await self.fast_stages(run, value, path, i)
                i += len(run)
            else:
                value = await self.exec(ss[i], value, f"{path}.stages[{i}]")
                i += 1
        return value

    async def fast_stages(self, run: list[tuple[StageNode, Stage, FastPure]], value: Any, path: str,
                          first: int) -> Any:
        """Consecutive Pure stdlib stages of a Sequential, each output the next input: each
        value checked as ``run_stage`` checks it, each call on a worker thread when its
        value is large (``engine.offload``); no events, one summary entry."""
        summary = Summary()
        max_bytes = self.services.config.max_value_bytes
        try:
            for k, (node, stage, fast) in enumerate(run):
                at = f"{path}.stages[{first + k}]"
                value = _apply_config(value, node.config)
                label = stage.label()
                check_value(value, max_bytes, what=f"the input of stage {label}", path=at)
                value = await timed_call(summary, fast, value, name=f"stage {label}", what=f"stage {label}", path=at,
                                         limiter=self.services.thread_limiter, budget_s=self.limits.timeout_s)
                check_value(value, max_bytes, what=f"the output of stage {label}", path=at)
                if k % 1024 == 1023:
                    await trio.lowlevel.checkpoint()  # stay cancellable
        except NoetherError as e:
            summary.failed(e.code, e.message, e.path or path)
            raise
        finally:
            self.record(summary.entry(stage_id=None, name=None, attempt=ATTEMPT.get(),
                                      node_path=f"{path}.stages[{first}..{first + len(run) - 1}]"))
        await trio.lowlevel.checkpoint()
        return value

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
            raise first_error(group) from None
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
        program_id, code = remote_call_program()
        label = f"RemoteStage {node.url}"
        attempt = ATTEMPT.get()
        await self.emit(StageStarted(self.run_id, attempt=attempt, node_path=path, stage_id=program_id, name=label))
        started = time.monotonic()
        usage = Usage()
        limit = self.services.config.max_value_bytes

        def check(v: Any, side: str) -> None:
            check_value(v, limit, what=f"the {side} of {label}", path=path)

        try:
            await maybe_off_loop(small(value), check, value, "input", limiter=self.services.thread_limiter)
            async with self.limiter, self.services.process_limiter:
                outcome = await self.services.executor.execute(StageCall(
                    program_id=program_id, language="python", code=code, effects=REMOTE_EFFECTS,
                    input={"url": node.url, "input": value}, limits=self.limits, isolation=self.isolation,
                    run_as=self.run_as, peer=self.requester_uid, label=label))
            usage = Usage.of(outcome)
            out = outcome_value(outcome, label, path)
            await maybe_off_loop(small(out), check, out, "output", limiter=self.services.thread_limiter)
            err = conforms(out, node.output, "output")
            if err:
                raise StageError("remote_output_mismatch", f"{label} returned a value that is not "
                                 f"{display(node.output)}: {err}", path)
        except NoetherError as e:
            await self.emit(StageFinished(self.run_id, attempt=attempt, node_path=path, stage_id=program_id,
                                          name=label, status=usage.status if usage.status not in (None, "ok")
                                          else "error", message=e.message,
                                          wall_ms=_ms_since(started)))
            raise
        await self.emit(StageFinished(self.run_id, attempt=attempt, node_path=path, stage_id=program_id, name=label,
                                      status="ok", wall_ms=_ms_since(started), isolation=usage.isolation,
                                      input_hash=value_hash(value), output_hash=value_hash(out)))
        return out

    # ------------------------------------------------------------ one stage

    def _refinements(self, stage: Stage, side: str, value: Any, path: str) -> None:
        for r in outer_refinements(stage.input if side == "input" else stage.output):
            why = check_refinement(r, value)
            if why:
                raise StageError("refinement_violation", f"stage {stage.label()}: {side} refinement violation "
                                 f"({display_refinement(r)}): {why}", path)

    def _accept_input(self, stage: Stage, value: Any, path: str, *, large: bool = False) -> str:
        """Check a stage's input (a JSON value within the caps, its refinements); its hash.
        ``large``: worked on off the event loop, and remembered (``known_values``)."""
        passed = self.passed
        known = self.known_value(value) if large else None
        if value is passed.value:
            self.passed = NOTHING_PASSED  # handed to a stage: checked again if it comes back as an output
            plain = passed.plain
        elif known is None:
            plain = check_value(value, self.services.config.max_value_bytes,
                                what=lambda: f"the input of stage {stage.label()}", path=path)
        if known is not None:
            in_hash = known
        elif value is passed.value and passed.hash is not None:
            in_hash = passed.hash
        elif large:
            encoded = serde_compact(value, plain=plain)
            in_hash = sha256_hex(encoded)  # value_hash(value)
            self.know_value(value, in_hash, _known_size(value, encoded))
        else:
            in_hash = value_hash(value, plain=plain)
        if self.checks:
            self._refinements(stage, "input", value, path)
        return in_hash

    def _accept_output(self, stage: Stage, out: Any, path: str, *, large: bool = False) -> str:
        """Check a stage's output as its input is checked; its hash."""
        known = self.known_value(out) if large else None
        if known is not None:  # a large value this run checked already (a stage that returns its input)
            if self.checks:
                self._refinements(stage, "output", out, path)
            self.passed = Passed(out, known, False, None)
            return known
        plain = check_value(out, self.services.config.max_value_bytes,
                            what=lambda: f"the output of stage {stage.label()}", path=path)
        if self.checks:
            self._refinements(stage, "output", out, path)
        encoded = serde_compact(out, plain=plain)
        out_hash = sha256_hex(encoded)  # value_hash(out)
        self.passed = Passed(out, out_hash, plain, encoded if plain else None)
        if large:
            self.know_value(out, out_hash, _known_size(out, encoded))
        return out_hash

    def _accept_large_input(self, stage: Stage, value: Any, path: str) -> str:
        return self._accept_input(stage, value, path, large=True)

    def _accept_large_output(self, stage: Stage, out: Any, path: str) -> str:
        return self._accept_output(stage, out, path, large=True)

    async def off_loop(self, fn: Callable[..., str], stage: Stage, value: Any, path: str) -> str:
        """``fn(stage, value, path)`` on a worker thread: checking and hashing 30 MB of JSON
        takes seconds the event loop does not have (small values are done inline)."""
        return await off_loop(fn, stage, value, path, limiter=self.services.thread_limiter,
                              budget_s=self.limits.timeout_s, what=f"checking a value of stage {stage.label()}",
                              path=path)

    async def run_stage(self, stage: Stage, value: Any, path: str) -> Any:
        services = self.services
        in_hash = (self._accept_input(stage, value, path) if small(value)
                   else await self.off_loop(self._accept_large_input, stage, value, path))
        facts = services.facts(stage)
        attempt = ATTEMPT.get()
        cacheable = self.options.cache and services.config.pure_cache and facts.cacheable
        if cacheable:
            hit, out = services.cache.get(stage.id, in_hash, namespace=self.cache_namespace)
            if hit:
                self.hits += 1
                out_hash = await maybe_off_loop(small(out), value_hash, out, limiter=services.thread_limiter)
                await self.emit(StageFinished(self.run_id, attempt=attempt, node_path=path, stage_id=stage.id,
                                              name=stage.name, status="cached", cached=True, input_hash=in_hash,
                                              output_hash=out_hash))
                self.record(_entry(stage, path, "Ok", 0, in_hash, out_hash, cached=True))
                return out
            self.misses += 1
        cost = facts.cost_cents
        if cost:
            self.budget.reserve(cost, stage=stage.label(), node_path=path)
        await self.emit(StageStarted(self.run_id, attempt=attempt, node_path=path, stage_id=stage.id, name=stage.name))
        started = time.monotonic()
        usage = Usage()
        try:
            if not facts.sandboxed:
                # In-process, or (higher-order) only runs other stages, which
                # take their own slots; a slot would only add a trio checkpoint.
                out, usage = await self.dispatch(self, stage, value, path)
            else:
                async with self.limiter, services.process_limiter:
                    out, usage = await self.dispatch(self, stage, value, path)
            out_hash = (self._accept_output(stage, out, path) if small(out)
                        else await self.off_loop(self._accept_large_output, stage, out, path))
            # The declared output type, enforced at the boundary (engine.boundary).
            warning = check_output(stage, out, usage, path) if self.output_checks else None
        except NoetherError as e:
            if isinstance(e, StageError) and e.usage is not None:
                usage = e.usage
            wall = _ms_since(started)
            # A stage that ran fine but whose output was refused has failed all the same.
            status = usage.status if usage.status not in (None, "ok") else "error"
            await self.emit(StageFinished(self.run_id, attempt=attempt, node_path=path, stage_id=stage.id,
                                          name=stage.name, status=status, wall_ms=wall,
                                          spent_cents=cost, input_hash=in_hash, message=e.message,
                                          build_ms=usage.build_ms, isolation=usage.isolation))
            self.record(_entry(stage, path, {"Failed": {"code": e.code, "message": e.message}}, wall,
                               in_hash, None, spent_cents=cost, **_extra(usage)))
            raise
        wall = _ms_since(started)
        if cacheable:
            services.cache.put(stage.id, in_hash, out, namespace=self.cache_namespace)
        await self.emit(StageFinished(self.run_id, attempt=attempt, node_path=path, stage_id=stage.id, name=stage.name,
                                      status="ok", wall_ms=wall, cpu_ms=usage.cpu_ms, max_rss_kb=usage.max_rss_kb,
                                      build_ms=usage.build_ms, spent_cents=cost, input_hash=in_hash,
                                      output_hash=out_hash, isolation=usage.isolation))
        if warning is not None:
            await self.emit(RunWarning(self.run_id, code="printed_not_returned", message=warning, node_path=path))
        self.record(_entry(stage, path, "Ok", wall, in_hash, out_hash, spent_cents=cost, **_extra(usage)))
        return out


_UNSET = object()
#: At most this many large values are remembered as checked per run (``Interpreter.known_values``).
KNOWN_VALUES = 16
#: Beyond ``max_value_bytes``, what the remembered values may hold (a text's object header).
KNOWN_SLACK = 4096


#: Bytes of memory a list or record may take per item or container, beyond its encoding
#: (``_known_size``): an empty list in a list is 3 bytes of JSON and 64 of memory.
KNOWN_ITEM_BYTES = 64


def _known_size(value: Any, encoded: bytes) -> int:
    """What a remembered value counts against the run's budget, its memory: a text's exactly;
    a list's or record's bounded from its encoding, whose length misses most of it (a list
    of empty lists takes 21 times its JSON, a list of ``[[[]]]`` 34 times), by what each item,
    key and container may take (counted from the separators and brackets, C-speed passes;
    those inside texts only make the bound larger)."""
    if type(value) is str:
        return sys.getsizeof(value)
    parts = encoded.count(b",") + encoded.count(b":") + encoded.count(b"[") + encoded.count(b"{")
    return len(encoded) + KNOWN_ITEM_BYTES * parts


class Passed(NamedTuple):
    """The value (by identity) that last passed ``check_value`` as a stage's output or as the
    run's input, and was not handed to a stage since: the next check of that very object (the
    next stage's input, the run's output) is not made twice, nor its hash computed twice.

    Relies on a checked value not being changed in place until it is handed to a stage (which
    forgets it here, so whatever a stage hands back is checked afresh): the engine itself
    never edits a value it passes on."""

    value: Any
    hash: str | None = None
    #: The check found it plain (``model.jcs.quick_check``): its hash skips that pass.
    plain: bool = False
    #: A plain stage output's serde-compact form, what its hash is of (keys sorted): the run's
    #: stored output when it is the run's output (``Engine._finish``), not encoded again.
    encoded: bytes | None = None


NOTHING_PASSED = Passed(_UNSET)


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _extra(usage: Usage) -> dict[str, Any]:
    return {k: v for k, v in msgspec.structs.asdict(usage).items()
            if v is not None and k in ("cpu_ms", "max_rss_kb", "build_ms", "isolation", "cached", "remote", "log")}


def _entry(stage: Stage, path: str, status: Any, wall: int, in_hash: str, out_hash: str | None,
           **extra: Any) -> dict[str, Any]:
    return {"stage_id": stage.id, "node_path": path, "name": stage.name, "status": status, "attempt": ATTEMPT.get(),
            "duration_ms": wall, "input_hash": in_hash, "output_hash": out_hash, **extra}


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error a failed group of concurrent parts stands for: a Ctrl-C among them (the
    user stopped the run: it is stored as interrupted, not as the failure it cut short),
    else the first failure that is not a cancellation."""
    interrupted = group.subgroup(KeyboardInterrupt)
    if interrupted is not None:
        found: BaseException = interrupted
        while isinstance(found, BaseExceptionGroup):
            found = found.exceptions[0]
        return found
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return first_error(exc)
        if not isinstance(exc, trio.Cancelled):
            return exc
    first: BaseException = group.exceptions[0]
    return first


def _apply_config(value: Any, config: dict[str, Any] | None) -> Any:
    """Upstream's config merge (spec §5.4)."""
    if not config:
        return value
    if isinstance(value, dict):
        return {**value, **config}
    key = next((k for k in CONFIG_INPUT_KEYS if k not in config), "items")
    return {key: value, **config}
