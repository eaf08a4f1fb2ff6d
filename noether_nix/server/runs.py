"""Runs are the daemon's: tasks in its nursery, not in the connection that asked.

``RunManager.submit`` admits a run (per-peer and global limits, the queue),
then starts it in the daemon's nursery with ``nursery.start``. The run's
events go into a bounded channel (``RunHandle.publish``); whoever streams
the run reads them from there, and nothing below the daemon ever touches
a socket. A reader that falls behind slows the run down (the channel is
bounded) until the send timeout, then counts as gone: a detached run goes
on without it, any other run is cancelled.
"""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import msgspec
import trio

from noether_nix.engine.events import Event, RunFinished
from noether_nix.engine.options import decode_options
from noether_nix.errors import NoetherError
from noether_nix.logs import get_logger
from noether_nix.service.context import Context
from noether_nix.service.endpoints import Run
from noether_nix.service.graph import run_graph

log = get_logger("noether.daemon")

#: Events a run may get ahead of its reader before publishing waits.
EVENT_BUFFER = 256


class Refused(msgspec.Struct, frozen=True):
    """The run never started: what the stream answers instead of events."""

    error: NoetherError


Item = Event | Refused


class RunHandle:
    def __init__(self, run_id: str, peer_uid: int, detach: bool, send_timeout_s: float) -> None:
        self.run_id = run_id
        self.peer_uid = peer_uid
        self.detach = detach
        self.send_timeout_s = send_timeout_s
        self.sender, self.receiver = trio.open_memory_channel[Item](EVENT_BUFFER)
        self.scope = trio.CancelScope()
        self.done = trio.Event()
        #: Its reader is gone: events are no longer published.
        self.orphaned = False
        self.result: RunFinished | None = None

    async def publish(self, item: Item) -> None:
        """Hand one event to the run's reader, waiting (backpressure) at most the send timeout."""
        if self.orphaned:
            return
        try:
            try:  # room in the buffer (nearly always): no timer, no wait
                self.sender.send_nowait(item)
                return
            except trio.WouldBlock:
                pass
            with trio.fail_after(self.send_timeout_s):
                await self.sender.send(item)
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError):
            self.reader_gone()

    def reader_gone(self) -> None:
        """The client stopped reading or left: a detached run goes on without it, others end."""
        if self.orphaned:
            return
        self.orphaned = True
        self.receiver.close()
        if not self.detach:
            self.scope.cancel()

    def cancel(self) -> None:
        self.scope.cancel()


class RunManager:
    def __init__(self, *, max_runs: int, max_queued: int, max_runs_per_peer: int, max_queued_per_peer: int,
                 send_timeout_s: float, counters: Counter[str]) -> None:
        self.max_queued = max_queued
        self.max_runs_per_peer = max_runs_per_peer
        self.max_queued_per_peer = max_queued_per_peer
        self.send_timeout_s = send_timeout_s
        self.counters = counters
        self.slots = trio.Semaphore(max_runs)
        self.peer_slots: dict[int, trio.Semaphore] = {}
        self.runs: dict[str, RunHandle] = {}
        self.waiting = 0
        self.waiting_by_peer: Counter[int] = Counter()
        self.stopping = False
        self.nursery: trio.Nursery | None = None

    def visible(self, run_id: str, ctx: Context) -> RunHandle:
        handle = self.runs.get(run_id)
        if handle is None or ctx.peer.visible_to not in (None, handle.peer_uid):
            raise NoetherError("run_not_found", f"no run {run_id} in flight", path=run_id)
        return handle

    def submit_now(self, ctx: Context, params: Run) -> tuple[trio.Semaphore, Any] | None:
        """Admit a run at once when both its slots are free (what ``submit`` checks first, then
        the slots taken without waiting): ``(peer slot, options)``, to hand to ``start``; None
        when it would have to wait (then ``submit`` queues it). Refusals are raised as by ``submit``."""
        options = self._admissible(ctx, params)
        peer_slot = self.peer_slots.setdefault(ctx.peer.uid, trio.Semaphore(self.max_runs_per_peer))
        if self.waiting or peer_slot.value == 0 or self.slots.value == 0:
            return None  # a queue forms in order: no run overtakes those waiting
        peer_slot.acquire_nowait()
        self.slots.acquire_nowait()
        return peer_slot, options

    def _admissible(self, ctx: Context, params: Run) -> Any:
        """The run's options, once nothing refuses it outright."""
        assert self.nursery is not None, "the daemon is not serving"
        options = decode_options(params.options)
        ctx.gate_run(options)  # refused at once, before it queues
        if self.stopping:
            raise NoetherError("busy", "the daemon is stopping")
        return options

    async def submit(self, ctx: Context, params: Run) -> RunHandle:
        """Admit a run and start it in the daemon's nursery; it may wait here for a slot."""
        options = self._admissible(ctx, params)
        uid = ctx.peer.uid
        if self.waiting >= self.max_queued:
            raise NoetherError("busy", "too many runs queued; try again later")
        if self.waiting_by_peer[uid] >= self.max_queued_per_peer:
            raise NoetherError("too_many_runs", f"uid {uid} already has {self.waiting_by_peer[uid]} runs waiting "
                               f"(at most {self.max_queued_per_peer} per peer); try again once some have started")
        peer_slot = self.peer_slots.setdefault(uid, trio.Semaphore(self.max_runs_per_peer))
        self.waiting += 1
        self.waiting_by_peer[uid] += 1
        try:
            await peer_slot.acquire()
            try:
                await self.slots.acquire()
            except BaseException:
                peer_slot.release()
                raise
        finally:
            self.waiting -= 1
            self.waiting_by_peer[uid] -= 1
            if not self.waiting_by_peer[uid]:
                del self.waiting_by_peer[uid]
        return await self.start(ctx, params, peer_slot, options)

    async def start(self, ctx: Context, params: Run, peer_slot: trio.Semaphore, options: Any) -> RunHandle:
        """Start an admitted run (``submit`` or ``submit_now``) in the daemon's nursery: it holds
        both its slots from here, and releases them itself."""
        assert self.nursery is not None
        handle = RunHandle(uuid.uuid4().hex, ctx.peer.uid, options.detach, self.send_timeout_s)
        try:
            # Shielded: once it has its slots the run starts (and releases them itself);
            # a cancelled caller must not release them a second time.
            with trio.CancelScope(shield=True):
                await self.nursery.start(self._run, handle, ctx, params, peer_slot)
        except BaseException:
            self.slots.release()
            peer_slot.release()
            raise
        return handle

    async def _run(self, handle: RunHandle, ctx: Context, params: Run, peer_slot: trio.Semaphore, *,
                   task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.runs[handle.run_id] = handle
        self.counters["runs_started"] += 1
        log.info("run_started", run_id=handle.run_id, peer_uid=handle.peer_uid)
        try:
            with handle.scope:
                task_status.started()
                try:
                    handle.result = await run_graph(ctx, params, emit=handle.publish, run_id=handle.run_id)
                except NoetherError as e:  # refused before it started: a bad graph, a policy, a grant
                    await handle.publish(Refused(e))
                except Exception as e:  # a bug must cost this run, never the daemon
                    log.exception("run_crashed", run_id=handle.run_id)
                    await handle.publish(Refused(NoetherError("internal_error", f"internal error: "
                                                              f"{type(e).__name__}: {e}", exit_code=3)))
            status = handle.result.status if handle.result is not None else (
                "cancelled" if handle.scope.cancelled_caught else "refused")
            self.counters[f"runs_{status}"] += 1
            log.info("run_finished", run_id=handle.run_id, status=status, peer_uid=handle.peer_uid)
        finally:
            handle.sender.close()
            self.runs.pop(handle.run_id, None)
            self.slots.release()
            peer_slot.release()
            handle.done.set()

    async def wait_all(self) -> None:
        """Until every run in flight has ended."""
        while self.runs:
            await next(iter(self.runs.values())).done.wait()

    def cancel_all(self) -> None:
        for handle in list(self.runs.values()):
            handle.cancel()
