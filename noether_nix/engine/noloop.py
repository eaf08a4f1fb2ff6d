"""Runs that need no event loop.

A run whose plan is a chain of stages — one Stage, a short Sequential, a
Branch, a Const, nested — never has two things to wait for at once: each stage waits
for the one before it, and a sandboxed stage's process is its only wait.
Such a run, started by a one-shot process (embedded ``noether run``), goes
through the same engine code (``Engine.run``, the interpreter, dispatch: the
same checks, events, trace, cache and stored run) with three things swapped
for their blocking twins while ``NO_LOOP`` is set:

* the executor runs the sandbox with ``sandbox.blocking.run_blocking`` (one
  ``poll`` loop in this thread, the same plan, limits and verdicts);
* concurrency slots are ``UNLIMITED`` (one stage at a time is all there is);
* work that would go to a worker thread (``engine.offload``) runs inline.

Nothing awaited then ever suspends, so ``drive`` runs the coroutine to its
end in one step — and trio is never imported (``noether_nix.deferred``).
Should anything suspend after all, that is an engine bug: ``drive`` says so
rather than run on. Which plans qualify is ``loop_free``; the rest run on
trio as always.
"""

from __future__ import annotations

from collections.abc import Coroutine
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

from noether_nix.engine.fastpath import LONG_SEQUENTIAL
from noether_nix.graph.ast import BranchNode, ConstNode, Node, SequentialNode, StageNode
from noether_nix.graph.preflight import is_stdlib
from noether_nix.stdlib.registry import STDLIB

if TYPE_CHECKING:
    from noether_nix.engine.state import StageFacts
    from noether_nix.graph.check import PreparedGraph
    from noether_nix.model.stage import Stage

T = TypeVar("T")

#: Set while a run goes without an event loop.
NO_LOOP: ContextVar[bool] = ContextVar("noether_no_loop", default=False)


class Unlimited:
    """A concurrency slot that is always free: ``async with`` it waits for nothing."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


UNLIMITED = Unlimited()


class SuspendedError(RuntimeError):
    pass


def drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro``, which must never suspend, to its end; its result or its exception.

    Should it suspend after all, ``SuspendedError`` is raised where it waits, and it is
    driven on: ``Engine.run`` ends the run as an internal error, stored and returned, as it
    does any engine bug. A coroutine that waits again is closed and the error raised here."""
    error = None
    try:
        coro.send(None)
        error = SuspendedError("a run without an event loop waited for one; this is a bug in noether-nix")
        coro.throw(error)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    assert error is not None
    raise error


def loop_free(prepared: PreparedGraph, facts: Any) -> bool:
    """Whether ``prepared``'s plan runs one thing at a time, each without an event loop: a
    tree of Sequentials (shorter than the bulk path's ``LONG_SEQUENTIAL``, which yields to
    the loop now and then), Branches and Consts whose stages are program stages (their
    sandboxes) or in-process Pure stdlib stages that work inline. ``facts`` is ``Engine.facts``."""
    return _node_ok(prepared.root, prepared, facts)


def _node_ok(node: Node, prepared: PreparedGraph, facts: Any) -> bool:
    match node:
        case StageNode():
            stage = prepared.resolution.stage_for(node)
            return _stage_ok(stage, facts(stage))
        case ConstNode():
            return True
        case SequentialNode(stages=ss):
            return 0 < len(ss) < LONG_SEQUENTIAL and all(_node_ok(s, prepared, facts) for s in ss)
        case BranchNode(predicate=pr, if_true=t, if_false=f):
            return all(_node_ok(n, prepared, facts) for n in (pr, t, f))
    # Parallel, Let, Fanout and Merge run their parts concurrently; Retry waits between
    # attempts; a RemoteStage is a call over the network: all of them on trio.
    return False


def _stage_ok(stage: Stage, facts: StageFacts) -> bool:
    if facts.cost_cents:
        return False
    if is_stdlib(stage):
        entry = STDLIB.get(stage.name or "")
        # In-process Pure work inline; everything else (kv and store stages that wait on the
        # database, sandboxed stdlib stages with file walls, the process host) runs on trio.
        return entry is not None and entry.inline
    return stage.implementation_code is not None and bool(stage.implementation_language)
