"""Admission: a run whose slots are free starts at once; it never overtakes runs that wait."""

from __future__ import annotations

from collections import Counter

import pytest
import trio
import trio.testing

from noether_nix.errors import NoetherError
from noether_nix.server.runs import RunManager
from noether_nix.service.context import Context, Peer
from noether_nix.service.endpoints import Run


def _ctx(uid: int = 1000) -> Context:
    return Context(Peer(uid=uid, gid=uid, writer=True), make_engine=lambda: None)  # type: ignore[arg-type,return-value]


async def test_free_slots_admit_at_once_and_a_queue_is_never_overtaken() -> None:
    runs = RunManager(max_runs=1, max_queued=4, max_runs_per_peer=1, max_queued_per_peer=4, send_timeout_s=1,
                      counters=Counter())
    params = Run(graph={}, input=None)
    async with trio.open_nursery() as nursery:
        runs.nursery = nursery
        admitted = runs.submit_now(_ctx(), params)
        assert admitted is not None  # both slots were free: taken without waiting
        assert runs.slots.value == 0
        assert runs.submit_now(_ctx(), params) is None  # no slot: it would have to wait

        waiter_started = trio.Event()

        async def waiter() -> None:
            waiter_started.set()
            runs.waiting += 1  # as ``submit`` counts a run that waits for its slot
            try:
                await runs.slots.acquire()
            finally:
                runs.waiting -= 1

        nursery.start_soon(waiter)
        await waiter_started.wait()
        await trio.testing.wait_all_tasks_blocked()
        admitted[0].release()
        runs.slots.release()  # the first run ends: its slot goes to the one waiting...
        assert runs.submit_now(_ctx(2000), params) is None  # ...never to a newcomer, even another peer's
        await trio.testing.wait_all_tasks_blocked()
        assert runs.waiting == 0 and runs.slots.value == 0


async def test_a_refused_run_is_refused_before_any_slot_is_taken() -> None:
    runs = RunManager(max_runs=1, max_queued=4, max_runs_per_peer=1, max_queued_per_peer=4, send_timeout_s=1,
                      counters=Counter())
    async with trio.open_nursery() as nursery:
        runs.nursery = nursery
        runs.stopping = True
        with pytest.raises(NoetherError) as refused:
            runs.submit_now(_ctx(), Run(graph={}, input=None))
        assert refused.value.code == "busy"
        assert runs.slots.value == 1
