"""``noether check``, ``run``, ``trace``, ``runs`` and ``warmup``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from noether_nix.errors import NoetherError
from noether_nix.service.context import Context
from noether_nix.service.endpoints import Check, NoParams, Ref, Run, RunsList, Warmup

if TYPE_CHECKING:  # imported lazily: the engine is heavy and most commands do not need it
    from noether_nix.engine.events import Event, RunFinished
    from noether_nix.graph.check import PreparedGraph


def check_graph(ctx: Context, p: Check) -> dict[str, Any]:
    """The report of ``noether check`` / ``run --dry-run``."""
    from noether_nix.engine.options import decode_options
    from noether_nix.graph.check import check_report

    options = decode_options(p.options)
    ctx.gate_run(options)
    return check_report(ctx.engine.prepare(p.graph, p.input, options, check_input=p.check_input))


async def run_graph(ctx: Context, p: Run, *, emit: Callable[[Event], Awaitable[None]] | None = None,
                    run_id: str | None = None, prepared: tuple[PreparedGraph, bool] | None = None) -> RunFinished:
    """Run a graph for ``ctx.peer``; its events go to ``emit``, the last one is the result.
    ``prepared``: what ``run_graph_without_loop`` prepared of this very request."""
    from noether_nix.engine.options import decode_options

    options = decode_options(p.options)
    ctx.gate_run(options)
    return await ctx.engine.run(p.graph, p.input, options, emit=emit, run_id=run_id, run_as=ctx.peer.run_as(),
                                store_writes=ctx.peer.writer, requester_uid=ctx.peer.uid, prepared=prepared)


def run_graph_without_loop(ctx: Context, p: Run, *, emit: Callable[[Event], Awaitable[None]] | None = None,
                           ) -> RunFinished | tuple[PreparedGraph, bool] | None:
    """``run_graph`` right here when the graph's plan needs no event loop (``engine.noloop``).
    Otherwise nothing runs, and the answer is what ``run_graph`` needs to run it on trio:
    the graph as prepared, or None (this path is only for the user's own runs)."""
    from noether_nix.engine.options import decode_options

    options = decode_options(p.options)
    ctx.gate_run(options)
    peer = ctx.peer
    if peer.run_as() is not None or not peer.writer:  # a daemon's peers: not this path's
        return None
    return ctx.engine.run_without_loop(p.graph, p.input, options, emit=emit, store_writes=peer.writer,
                                       requester_uid=peer.uid)


def find_run(ctx: Context, p: Ref) -> dict[str, Any]:
    """A run by its id, else the latest run of a composition id (of those the peer may see);
    a unique prefix of either does too (``noether trace 3fa8``)."""
    runs, mine = ctx.runs, ctx.peer.visible_to
    run = runs.get(p.ref, visible_to=mine) or runs.latest(p.ref, visible_to=mine)
    if run is not None:
        return run
    run_ids, comp_ids = runs.ids_with_prefix(p.ref.strip(), visible_to=mine)
    found = [("run", r) for r in run_ids] + [("composition", c) for c in comp_ids]
    if len(found) == 1:
        kind, full = found[0]
        run = runs.get(full, visible_to=mine) if kind == "run" else runs.latest(full, visible_to=mine)
        if run is not None:
            return run
    if len(found) > 1:
        listing = ", ".join(f"{kind} {full[:12]}" for kind, full in found[:6])
        raise NoetherError("ambiguous_reference", f"{p.ref!r} is the start of {len(found)}"
                           f"{'+' if len(run_ids) >= 10 or len(comp_ids) >= 10 else ''} ids: {listing}",
                           path=p.ref, hint="give more of the id",
                           details={"candidates": [full for _, full in found]})
    raise NoetherError("trace_not_found", f"no run or composition {p.ref!r}", path=p.ref,
                       hint="`noether runs` lists recent runs")


def latest_trace(ctx: Context, p: Ref) -> dict[str, Any]:
    """The trace of a composition's latest run."""
    latest = ctx.runs.latest(p.ref, visible_to=ctx.peer.visible_to)
    trace = latest["trace"] if latest else None
    if trace is None:
        raise NoetherError("trace_not_found", f"no trace for {p.ref}", path=p.ref)
    return trace  # type: ignore[no-any-return]


def recent_runs(ctx: Context, p: RunsList) -> dict[str, Any]:
    return {"runs": ctx.runs.recent(p.limit, visible_to=ctx.peer.visible_to)}


async def warmup_stages(ctx: Context, p: Warmup | NoParams, *,
                        progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Build the programs of ``refs`` (default: every Active stage); the warmup report."""
    from noether_nix.nix.registry import ProgramRegistry
    from noether_nix.nix.warmup import warmup

    refs = getattr(p, "refs", None)
    store = ctx.store
    stages = [store.resolve(r) for r in refs] if refs else [s for s in store.all() if s.state == "Active"]
    return await warmup(stages, ProgramRegistry(store.conn), progress=progress)


