"""What the daemon answers about itself: health, metrics, its in-flight runs."""

from __future__ import annotations

import os
import time
from typing import Any

import trio

from noether_nix.server.daemon import Daemon
from noether_nix.service.context import Context
from noether_nix.service.doctor import describe_nix, describe_sandbox
from noether_nix.service.endpoints import NoParams, RunId

# Host checks start subprocesses (bwrap, nix-build): done off the event loop, at most this often.
HOST_CHECK_EVERY_S = 30.0


def _daemon(ctx: Context) -> Daemon:
    daemon = ctx.daemon
    assert isinstance(daemon, Daemon), "a daemon-only endpoint"
    return daemon


async def health(ctx: Context, p: NoParams) -> dict[str, Any]:
    d = _daemon(ctx)
    host = await host_description(d)
    return {"status": "stopping" if d.runs.stopping else "ok", "pid": os.getpid(),
            "uptime_s": int(time.time() - d.started), "runs_in_flight": len(d.runs.runs),
            "runs_queued": d.runs.waiting, "store": d.engine.store.count(), "warmup": d.warmup,
            "warm_sandboxes": d.engine.describe_warm(), **host, "counters": dict(d.counters)}


async def host_description(d: Daemon) -> dict[str, Any]:
    cached = d.host_cache
    if cached is None or time.monotonic() - cached[0] > HOST_CHECK_EVERY_S:
        async with d.host_lock:
            cached = d.host_cache
            if cached is None or time.monotonic() - cached[0] > HOST_CHECK_EVERY_S:
                host = await trio.to_thread.run_sync(lambda: {"sandbox": describe_sandbox(), "nix": describe_nix()})
                cached = d.host_cache = (time.monotonic(), host)
    return cached[1]


def metrics(ctx: Context, p: NoParams) -> bytes:
    d = _daemon(ctx)
    lines = [f"noether_{k}_total {v}" for k, v in sorted(d.counters.items())]
    lines.append(f"noether_runs_in_flight {len(d.runs.runs)}")
    lines.append(f"noether_runs_queued {d.runs.waiting}")
    return ("\n".join(lines) + "\n").encode()


def cancel_run(ctx: Context, p: RunId) -> dict[str, Any]:
    """Cancel a run in flight (the requester's own; writers may cancel any)."""
    _daemon(ctx).runs.visible(p.run_id, ctx).cancel()
    return {"run_id": p.run_id, "cancelled": True}
