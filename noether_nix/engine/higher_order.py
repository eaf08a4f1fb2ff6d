"""Higher-order stdlib stages: map, filter, reduce, retry, fallback, timeout,
race, parallel.

Their stage arguments are stage references (ID, ID prefix, legacy v0 ID or
name) known only at run time, so each named stage passes the same policy
check a graph's own stages pass before the run (effects, capabilities,
signature, isolation), and is then run through the engine like any other:
sandboxed if it needs to be, traced, cached, charged to the run's budget.
"""

from __future__ import annotations

import contextvars
import math
import time
from typing import Any

from noether_nix.deferred import trio
from noether_nix.engine.events import RunWarning, StageProgress
from noether_nix.engine.fastcall import timed_call
from noether_nix.engine.fastpath import (
    CHECKPOINT_S,
    CHUNK,
    FastPure,
    OutputBound,
    Summary,
    index_of_failure,
    scan_chunk,
)
from noether_nix.engine.offload import maybe_off_loop
from noether_nix.engine.options import ATTEMPT, RetriesExhausted, StageError, with_retries
from noether_nix.engine.state import IN_PROCESS, RunState
from noether_nix.errors import NoetherError
from noether_nix.graph.preflight import check_stage_policy, needs_sandbox
from noether_nix.graph.resolve import Warning_, resolve_ref
from noether_nix.model.stage import Stage
from noether_nix.model.types import display
from noether_nix.model.values import check_value, check_value_size, conforms
from noether_nix.stdlib._shapes import StageFailure, need_list, need_record

#: At most one progress event per map (filter, reduce) this often, between its first and its last.
PROGRESS_EVERY_S = 0.25


class HigherOrderError(NoetherError):
    def __init__(self, code: str, message: str, path: str, **kw: Any) -> None:
        super().__init__(code, message, path=path, exit_code=3, **kw)


# Input shapes, with the stdlib's own checks (a StageFailure becomes this
# stage's stage_failed in run_higher_order).
def _field(value: Any, name: str) -> Any:
    return need_record(value, name)[name]


def _list(value: Any, name: str) -> list[Any]:
    return need_list(_field(value, name), f"field '{name}'")


def _count(value: Any, name: str, *, default: float | None = None) -> float:
    got = value.get(name) if isinstance(value, dict) else None
    if got is None and default is not None:
        return default
    if isinstance(got, bool) or not isinstance(got, (int, float)) or not math.isfinite(got) or got < 0:
        raise StageFailure(f"field '{name}' must be a number ≥ 0")
    return float(got)


class HigherOrder:
    """Runs one higher-order stage of a run; each named stage runs through ``run.run_stage``."""

    def __init__(self, run: RunState, stage: Stage, path: str) -> None:
        self.run = run
        self.stage = stage
        self.path = path
        self.label = stage.label()
        self.last_progress = 0.0

    # -------------------------------------------------------- references

    async def resolve(self, ref: Any, where: str) -> Stage:
        """A stage reference, resolved as a graph's own are (lifecycle rules:
        a Tombstoned stage is refused, a Deprecated one followed to its
        successor with a warning), then checked against the run's policy."""
        if not isinstance(ref, str) or not ref:
            raise HigherOrderError("stage_failed", f"stage {self.label}: {where} must be a stage reference (text)",
                                   self.path)
        cache = self.run.resolved_refs
        stage = cache.get(ref)
        if stage is None:
            where_path = f"{self.path} ({where} {ref})"
            warnings: list[Warning_] = []
            try:
                stage = resolve_ref(self.run.services.store, ref, "signature", where_path, warnings)
            except NoetherError as e:
                raise HigherOrderError(e.code, f"stage {self.label}: {where} {ref!r}: {e.message}",
                                       self.path) from None
            for w in warnings:
                await self.run.emit(RunWarning(self.run.run_id, code=w.code, message=w.message, node_path=self.path))
            check_stage_policy(stage, where_path, self.run.policy)
            cache[ref] = stage
        return stage

    async def call(self, stage: Stage, value: Any, path: str) -> Any:
        self.check_input(stage, value, path)
        return await self.run.run_stage(stage, value, path)

    def item_path(self, i: int) -> str:
        return f"{self.path}.items[{i}]"

    async def each(self, stage: Stage, values: list[Any]) -> list[Any]:
        """``stage`` on every value (at ``item_path(i)``): a Pure stdlib stage on the fast
        path (``engine.fastpath``), other in-process ones in order, concurrently
        (bounded by the run's limiter) when each call is a sandbox."""
        total = len(values)
        await self.progress(0, total)
        if not needs_sandbox(stage):
            fast = self.run.services.facts(stage).fast
            if fast is not None and self.run.options.trace == "summary":
                out = await self.fast_each(stage, fast, values)
            else:
                out = []
                for i, v in enumerate(values):
                    if i % 1024 == 1023:
                        await trio.lowlevel.checkpoint()  # stay cancellable on long lists
                        await self.progress(i, total)
                    out.append(await self.call(stage, v, self.item_path(i)))
        else:
            done = 0

            async def counted(s: Stage, v: Any, p: str) -> Any:
                nonlocal done
                result = await self.call(s, v, p)
                done += 1
                await self.progress(done, total)
                return result

            out = await self.run.gather([(stage, v, self.item_path(i)) for i, v in enumerate(values)], counted)
        await self.progress(total, total)
        return out

    async def fast_each(self, stage: Stage, fast: FastPure, values: list[Any]) -> list[Any]:
        """``each`` for a Pure stdlib stage: a chunk at a time, one summary trace entry. A
        chunk small enough runs on the event loop (a checkpoint after the chunks of each
        ``CHECKPOINT_S`` and after the last), a larger one on a worker thread within the
        stage's time budget (``engine.offload``)."""
        summary = Summary()
        out: list[Any] = []
        bound = OutputBound(self.run.services.config.max_value_bytes)
        threads = self.run.services.thread_limiter
        what = f"stage {stage.label()} (called by {self.label})"
        clock = time.perf_counter
        checkpointed = clock()
        try:
            for start in range(0, len(values), CHUNK):
                chunk = values[start:start + CHUNK]
                typed, inline = scan_chunk(chunk, fast.input_types)
                if not typed:
                    for j, v in enumerate(chunk):  # the first value of the wrong type, named as `call` would
                        self.check_input(stage, v, self.item_path(start + j))
                try:
                    # Every input of the chunk is of the stage's input type here (checked above).
                    got = await maybe_off_loop(inline, summary.call_chunk, fast.impl, chunk, fast.on_text,
                                               limiter=threads, budget_s=self.run.limits.timeout_s, what=what,
                                               path=self.item_path(start))
                except (StageFailure, NoetherError) as failure:
                    if isinstance(failure, StageError) and failure.code == "stage_timed_out":
                        raise
                    j, e = await maybe_off_loop(inline, index_of_failure, fast.impl, chunk, limiter=threads,
                                                budget_s=self.run.limits.timeout_s, what=what,
                                                path=self.item_path(start))
                    summary.calls += j + 1
                    message = f"stage {stage.label()} failed: {e.message if isinstance(e, NoetherError) else e}"
                    raise StageError("stage_failed", message, self.item_path(start + j), usage=IN_PROCESS) from None
                out += got
                if bound.over(out, got):  # fail now, not once the whole list is in memory
                    check_value_size(out, bound.limit, what=f"the output of stage {self.label}", path=self.path)
                now = clock()
                if now - checkpointed >= CHECKPOINT_S or start + CHUNK >= len(values):
                    await trio.lowlevel.checkpoint()  # stay cancellable on long lists
                    checkpointed = now
                await self.progress(start + len(chunk), len(values))
        except NoetherError as e:
            summary.failed(e.code, e.message, e.path or self.item_path(summary.calls))
            raise
        finally:
            self.run.record(summary.entry(stage_id=stage.id, name=stage.name, node_path=f"{self.path}.items[*]",
                                          attempt=ATTEMPT.get()))
        return out

    def check_input(self, stage: Stage, value: Any, path: str) -> None:
        why = conforms(value, stage.input, "input")
        if why:
            raise HigherOrderError("stage_input_mismatch", f"stage {stage.label()} (called by {self.label}) expects "
                                   f"{display(stage.input)}: {why}", path)

    async def progress(self, done: int, total: int) -> None:
        """A ``StageProgress`` event (the CLI's progress bar); between the first and the
        last, at most one every ``PROGRESS_EVERY_S``."""
        now = time.monotonic()
        if 0 < done < total and now - self.last_progress < PROGRESS_EVERY_S:
            return
        self.last_progress = now
        await self.run.emit(StageProgress(self.run.run_id, node_path=self.path, done=done, total=total))

    # -------------------------------------------------------- the stages

    async def map(self, value: Any) -> Any:
        items = _list(value, "items")
        inner = await self.resolve(_field(value, "stage_id"), "stage_id")
        return await self.each(inner, items)

    async def filter(self, value: Any) -> Any:
        items = _list(value, "items")
        inner = await self.resolve(_field(value, "stage_id"), "stage_id")
        keep = await self.each(inner, items)
        for i, k in enumerate(keep):
            if not isinstance(k, bool):
                raise HigherOrderError("stage_failed", f"stage {self.label}: predicate {inner.label()} returned "
                                       f"{type(k).__name__} for item {i}, not a boolean", f"{self.path}.items[{i}]")
        return [item for item, k in zip(items, keep, strict=True) if k]

    async def reduce(self, value: Any) -> Any:
        items = _list(value, "items")
        inner = await self.resolve(_field(value, "stage_id"), "stage_id")
        acc = _field(value, "initial")
        await self.progress(0, len(items))
        fast = self.run.services.facts(inner).fast if not needs_sandbox(inner) else None
        if fast is not None and self.run.options.trace == "summary":
            acc = await self.fast_reduce(inner, fast, items, acc)
        else:
            for i, item in enumerate(items):
                if i % 1024 == 1023:
                    await trio.lowlevel.checkpoint()  # stay cancellable on long lists
                acc = await self.call(inner, {"accumulator": acc, "item": item}, self.item_path(i))
                await self.progress(i + 1, len(items))
        await self.progress(len(items), len(items))
        return acc

    async def fast_reduce(self, stage: Stage, fast: FastPure, items: list[Any], acc: Any) -> Any:
        """``reduce`` for a Pure stdlib stage: every call checked, one summary trace entry.
        The accumulator grows call by call: it is checked on each, and a call on a large
        one runs on a worker thread within the stage's time budget."""
        summary = Summary()
        limit = self.run.services.config.max_value_bytes
        threads = self.run.services.thread_limiter
        try:
            for i, item in enumerate(items):
                path = self.item_path(i)
                arg = {"accumulator": acc, "item": item}
                self.check_input(stage, arg, path)
                check_value(acc, limit, what=lambda: f"the input of stage {stage.label()}", path=path)
                acc = await timed_call(summary, fast, arg, name=f"stage {stage.label()}",
                                       what=f"stage {stage.label()} (called by {self.label})", path=path,
                                       limiter=threads, budget_s=self.run.limits.timeout_s)
                if i % CHUNK == CHUNK - 1:
                    await trio.lowlevel.checkpoint()  # stay cancellable on long lists
                    await self.progress(i + 1, len(items))
        except NoetherError as e:
            summary.failed(e.code, e.message, e.path or self.path)
            raise
        finally:
            self.run.record(summary.entry(stage_id=stage.id, name=stage.name, node_path=f"{self.path}.items[*]",
                                          attempt=ATTEMPT.get()))
        return acc

    async def retry(self, value: Any) -> Any:
        inner = await self.resolve(_field(value, "stage_id"), "stage_id")
        attempts = int(_count(value, "max_attempts"))
        delay_ms = _count(value, "delay_ms", default=0.0)
        arg = _field(value, "input")

        async def attempt(n: int) -> Any:
            return await self.call(inner, arg, f"{self.path}.attempts[{n}]")

        try:
            return await with_retries(attempt, attempts, delay_ms)
        except RetriesExhausted as e:
            raise HigherOrderError("retry_exhausted", f"stage {self.label}: {inner.label()} failed {attempts} "
                                   f"times; last: {e.last.message}", self.path,
                                   details={"last_error": e.last.to_dict()}) from None

    async def fallback(self, value: Any) -> Any:
        refs = _list(value, "stages")
        arg = _field(value, "input")
        stages = [await self.resolve(r, f"stages[{i}]") for i, r in enumerate(refs)]
        errors: list[dict[str, Any]] = []
        for i, inner in enumerate(stages):
            try:
                return await self.call(inner, arg, f"{self.path}.stages[{i}]")
            except NoetherError as e:
                errors.append(e.to_dict())
        raise HigherOrderError("all_failed", f"stage {self.label}: all {len(stages)} stages failed",
                               self.path, details={"errors": errors})

    async def timeout(self, value: Any) -> Any:
        inner = await self.resolve(_field(value, "stage_id"), "stage_id")
        limit_ms = _count(value, "timeout_ms")
        arg = _field(value, "input")
        with trio.move_on_after(limit_ms / 1000):
            return await self.call(inner, arg, f"{self.path}.stage")
        raise HigherOrderError("stage_timed_out", f"stage {self.label}: {inner.label()} did not finish within "
                               f"{limit_ms:g} ms (it was stopped)", self.path)

    async def race(self, value: Any) -> Any:
        refs = _list(value, "stages")
        arg = _field(value, "input")
        stages = [await self.resolve(r, f"stages[{i}]") for i, r in enumerate(refs)]
        if not stages:
            raise HigherOrderError("stage_failed", f"stage {self.label}: 'stages' is empty", self.path)
        winner: list[Any] = []
        errors: list[dict[str, Any]] = []

        async def one(i: int, inner: Stage, cancel: trio.CancelScope) -> None:
            try:
                out = await self.call(inner, arg, f"{self.path}.stages[{i}]")
            except NoetherError as e:
                errors.append(e.to_dict())
                return
            if not winner:
                winner.append(out)
                cancel.cancel()  # the losers' sandboxes are killed

        async with trio.open_nursery() as nursery:
            for i, inner in enumerate(stages):
                nursery.start_soon(one, i, inner, nursery.cancel_scope)
        if winner:
            return winner[0]
        raise HigherOrderError("all_failed", f"stage {self.label}: all {len(stages)} stages failed",
                               self.path, details={"errors": errors})

    async def parallel(self, value: Any) -> Any:
        refs = _list(value, "stages")
        inputs = _list(value, "inputs")
        if len(refs) != len(inputs):
            raise HigherOrderError("stage_failed", f"stage {self.label}: {len(refs)} stages but {len(inputs)} inputs",
                                   self.path)
        stages = [await self.resolve(r, f"stages[{i}]") for i, r in enumerate(refs)]
        jobs = [(s, v, f"{self.path}.stages[{i}]") for i, (s, v) in enumerate(zip(stages, inputs, strict=True))]
        return await self.run.gather(jobs, self.call)


# How many higher-order stages may run inside one another (map of map of …).
# Each level is a few stack frames; an input nested a thousand levels deep
# must be an error, not a RecursionError in the daemon.
MAX_NESTING = 32
_nesting: contextvars.ContextVar[int] = contextvars.ContextVar("noether_higher_order_nesting", default=0)


async def run_higher_order(run: RunState, stage: Stage, value: Any, path: str) -> Any:
    ho = HigherOrder(run, stage, path)
    method = getattr(ho, stage.name or "", None)
    if method is None:
        raise HigherOrderError("no_implementation", f"stage {stage.label()} is not a higher-order stage", path)
    depth = _nesting.get() + 1
    if depth > MAX_NESTING:
        raise HigherOrderError("nesting_too_deep", f"stage {stage.label()}: higher-order stages nested more than "
                               f"{MAX_NESTING} deep", path)
    token = _nesting.set(depth)
    try:
        return await method(value)
    except StageFailure as e:
        raise HigherOrderError("stage_failed", f"stage {stage.label()}: {e}", path) from None
    finally:
        _nesting.reset(token)
