"""What a run lends the code that runs its stages, as interfaces.

The graph interpreter implements ``RunState``; stage implementations (the
stdlib dispatch, the higher-order stages) see only this interface, so they
sit below the interpreter and nothing imports in a circle. ``Services`` is
what the engine shares with every run (store, cache, executor, limiters).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import msgspec

from noether_nix.deferred import trio
from noether_nix.engine.events import Event
from noether_nix.engine.executor import Executor, StageOutcome, stage_log
from noether_nix.engine.fastpath import FastPure
from noether_nix.engine.options import Isolation, RunOptions
from noether_nix.graph.preflight import PolicyOptions
from noether_nix.model.stage import Stage
from noether_nix.sandbox.identity import RunAs
from noether_nix.sandbox.policy import Limits
from noether_nix.settings import EngineSettings
from noether_nix.store.cache import PureCache
from noether_nix.store.kv import KvStore
from noether_nix.store.runs import RunStore
from noether_nix.store.stages import StageStore


class Usage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What one stage call used, for its events and trace entry."""

    isolation: str | None = None
    status: str | None = None  # the sandbox's verdict ("ok", "timed_out", …)
    cpu_ms: int | None = None
    max_rss_kb: int | None = None
    build_ms: int | None = None
    #: Served from the executor's cache (a remote ActionCache hit), and where it ran.
    cached: bool | None = None
    remote: dict[str, Any] | None = None
    #: What the stage printed (stdout and stderr, in order; a bounded tail), kept in its trace entry.
    log: str | None = None

    @classmethod
    def of(cls, outcome: StageOutcome) -> Usage:
        return cls(isolation=outcome.isolation, status=outcome.status, cpu_ms=outcome.cpu_ms,
                   max_rss_kb=outcome.max_rss_kb, build_ms=outcome.build_ms, cached=outcome.cached or None,
                   remote=outcome.remote, log=stage_log(outcome.stderr_tail))


IN_PROCESS = Usage(isolation="in-process")


class StageFacts(msgspec.Struct, frozen=True):
    """What the engine needs to know about a stage on every call, computed once."""

    sandboxed: bool
    #: Pure and worth remembering: in-process stdlib stages cost less than a lookup.
    cacheable: bool
    cost_cents: int
    #: An in-process Pure stdlib stage that is free and has no refinement to
    #: check: what the fast path needs to run it in bulk (``engine.fastpath``).
    fast: FastPure | None = None


class Services(Protocol):
    """What the engine shares with every run."""

    config: EngineSettings
    store: StageStore
    cache: PureCache
    runs: RunStore
    kv: KvStore

    @property
    def executor(self) -> Executor: ...
    #: The kv_* and store stages' implementations (``engine.builtin``).
    builtins: dict[str, Callable[..., Any]]

    #: Slots for sandboxed stages (a ``trio.CapacityLimiter``; ``engine.noloop.UNLIMITED`` without a loop).
    @property
    def process_limiter(self) -> AbstractAsyncContextManager[Any]: ...

    #: Worker threads for in-process work off the event loop (``engine.offload``).
    @property
    def thread_limiter(self) -> trio.CapacityLimiter | None: ...

    def facts(self, stage: Stage) -> StageFacts: ...


class RunState(Protocol):
    """One run, as the code that runs its stages sees it."""

    run_id: str
    options: RunOptions
    policy: PolicyOptions
    isolation: Isolation
    limits: Limits
    run_as: RunAs | None
    #: Whether whoever started the run may change the store (else: only its own part of it).
    store_writes: bool
    requester_uid: int | None
    services: Services
    #: Higher-order stage references, resolved once per run.
    resolved_refs: dict[str, Stage]
    #: Per-run resources (the process host) a stage implementation opened:
    #: closed, and waited for, before the run ends.
    cleanup: contextlib.AsyncExitStack
    #: Guards opening per-run resources (a ``trio.Lock``).
    resource_lock: AbstractAsyncContextManager[Any]
    resources: dict[str, Any]

    #: Whether refinement types are checked in this run.
    checks: bool

    async def emit(self, ev: Event) -> None: ...

    def record(self, entry: dict[str, Any]) -> None: ...

    async def run_stage(self, stage: Stage, value: Any, path: str) -> Any: ...

    async def gather(self, jobs: list[tuple[Any, Any, str]],
                     fn: Callable[[Any, Any, str], Awaitable[Any]]) -> list[Any]: ...


#: Runs one stage's implementation: its output and what it used.
Dispatch = Callable[[RunState, Stage, Any, str], Awaitable[tuple[Any, Usage]]]
