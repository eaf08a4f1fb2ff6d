"""Engine behaviour a user notices: concurrency, budgets, cache, cancellation, failures."""

from __future__ import annotations

import time

import trio

from noether_nix.engine.engine import Engine, RunOptions
from noether_nix.engine.events import Event, StageFinished, StageStarted
from tests.engine.conftest import AddStage, graph
from tests.processes import own_sandbox_cgroups, own_sandbox_pids, running

SLEEP = "import time\ndef execute(x):\n    time.sleep(0.8)\n    return x\n"


async def test_parallel_wall_time_is_the_longest_branch(engine: Engine, add: AddStage) -> None:
    add("sleepy", SLEEP, effects=["NonDeterministic"])
    root = {"op": "Parallel", "branches": {k: {"op": "Stage", "id": "sleepy"} for k in "abcd"}}
    await engine.run(graph({"op": "Stage", "id": "sleepy"}), 0, RunOptions())  # build the program first
    t0 = time.monotonic()
    res = await engine.run(graph(root), 1, RunOptions())
    elapsed = time.monotonic() - t0
    assert res.status == "ok" and res.output == {k: 1 for k in "abcd"}
    assert elapsed < 2.4, f"4 × 0.8 s branches took {elapsed:.2f}s: not concurrent"


async def test_concurrent_branches_cannot_overshoot_the_budget(engine: Engine, add: AddStage) -> None:
    add("paid_fail", "def execute(x):\n    raise RuntimeError('always')\n",
        effects=["Fallible", {"effect": "Cost", "cents": 4}])
    retry = {"op": "Retry", "stage": {"op": "Stage", "id": "paid_fail"}, "max_attempts": 5}
    root = {"op": "Parallel", "branches": {"a": retry, "b": retry, "c": retry}}
    res = await engine.run(graph(root), None, RunOptions(budget_cents=12, optimize=False))
    assert res.status == "failed"
    assert res.error is not None and res.error["code"] == "budget_exceeded"
    assert res.spent_cents <= 12


async def test_pure_stage_is_cached_until_evicted(engine: Engine, add: AddStage) -> None:
    stage = add("double", "def execute(x):\n    return x * 2\n", input="Number", output="Number")
    started: list[str] = []

    async def watch(ev: Event) -> None:
        if isinstance(ev, StageStarted):
            started.append(ev.stage_id)

    g = graph({"op": "Stage", "id": "double"})
    first = await engine.run(g, 21, RunOptions(), emit=watch)
    second = await engine.run(g, 21, RunOptions(), emit=watch)
    assert first.output == second.output == 42
    assert started == [stage.id]  # the second run did not execute it
    assert second.cache == {"hits": 1, "misses": 0}
    engine.cache.evict(stage.id)
    third = await engine.run(g, 21, RunOptions(), emit=watch)
    assert third.output == 42 and started == [stage.id, stage.id]


async def test_a_peer_is_never_served_another_peers_cached_output(engine: Engine, add: AddStage) -> None:
    """Security finding 10: the pure cache is keyed by peer for the daemon's
    non-writers; writers (and embedded runs) share one namespace."""
    # Declared Pure, but what it returns is its caller's own: a cached copy must not reach anyone else.
    add("token", "import os\ndef execute(x):\n    return os.urandom(8).hex()\n", input="Number", output="Text")
    g = graph({"op": "Stage", "id": "token"})

    async def run_as_peer(uid: int, writer: bool = False) -> tuple[str, dict[str, int]]:
        res = await engine.run(g, 1, RunOptions(), store_writes=writer, requester_uid=uid)
        assert res.status == "ok", res.error
        return res.output, res.cache

    alice, first = await run_as_peer(1001)
    assert first == {"hits": 0, "misses": 1}
    bob, cache = await run_as_peer(1002)
    assert cache == {"hits": 0, "misses": 1} and bob != alice
    again, cache = await run_as_peer(1001)
    assert cache == {"hits": 1, "misses": 0} and again == alice  # each peer still has its own cache
    root, cache = await run_as_peer(0, writer=True)
    assert cache == {"hits": 0, "misses": 1} and root not in (alice, bob)
    other_writer, cache = await run_as_peer(1000, writer=True)
    assert cache == {"hits": 1, "misses": 0} and other_writer == root
    embedded = await engine.run(g, 1, RunOptions())
    assert embedded.cache == {"hits": 1, "misses": 0} and embedded.output == root


async def test_failures_are_never_cached_and_say_why(engine: Engine, add: AddStage) -> None:
    add("boom", "def execute(x):\n    raise ValueError('bad input ' + str(x))\n", effects=["Fallible"])
    res = await engine.run(graph({"op": "Stage", "id": "boom"}), 7, RunOptions())
    assert res.status == "failed" and res.error is not None
    assert "ValueError: bad input 7" in res.error["message"]
    assert engine.cache.size() == 0
    stored = engine.get_run(res.run_id)
    assert stored is not None and stored["status"] == "failed"  # failed runs keep their trace
    assert stored["trace"]["stages"][0]["status"]["Failed"]["code"] == "stage_error"


async def test_cancelled_run_leaves_no_process_behind(engine: Engine, add: AddStage) -> None:
    add("forever", "import time\ndef execute(x):\n    while True:\n        time.sleep(0.05)\n",
        effects=["NonDeterministic"])
    started = trio.Event()
    seen: set[int] = set()

    async def watch(ev: Event) -> None:
        if isinstance(ev, StageStarted):
            started.set()

    async def look() -> None:
        await started.wait()
        with trio.move_on_after(60):
            while len(seen) < 2:  # bwrap and the stage, found by their cgroup
                seen.update(own_sandbox_pids())
                await trio.sleep(0.05)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(look)
        with trio.move_on_after(3):
            await engine.run(graph({"op": "Stage", "id": "forever"}), None, RunOptions(), emit=watch)
    assert len(seen) >= 2, "the stage's sandbox was never seen in a cgroup of this test's"
    # The run ended only once its sandbox was gone: no process of it running, no cgroup of it left.
    assert own_sandbox_cgroups() == {}
    assert not [pid for pid in seen if running(pid)]
    runs = engine.runs.recent(1)
    assert runs[0]["status"] == "cancelled"


async def test_stage_timeout_is_reported(engine: Engine, add: AddStage) -> None:
    add("slow", SLEEP.replace("0.8", "5"), effects=["NonDeterministic"])
    events: list[StageFinished] = []

    async def watch(ev: Event) -> None:
        if isinstance(ev, StageFinished):
            events.append(ev)

    res = await engine.run(graph({"op": "Stage", "id": "slow"}), 1, RunOptions(timeout_secs=1), emit=watch)
    assert res.status == "failed" and res.error is not None and res.error["code"] == "stage_timed_out"
    assert events[-1].status == "timed_out"


async def test_build_time_is_reported_separately(engine: Engine, add: AddStage) -> None:
    add("fresh", "def execute(x):\n    return [x, 'fresh-%d' % 1]\n", effects=["NonDeterministic"])
    finished: list[StageFinished] = []

    async def watch(ev: Event) -> None:
        if isinstance(ev, StageFinished):
            finished.append(ev)

    await engine.run(graph({"op": "Stage", "id": "fresh"}), 1, RunOptions(), emit=watch)
    await engine.run(graph({"op": "Stage", "id": "fresh"}), 1, RunOptions(), emit=watch)
    assert finished[0].build_ms is not None and finished[0].build_ms > 0
    assert finished[1].build_ms is None


async def test_stdlib_without_implementation_is_an_error_not_an_example(engine: Engine) -> None:
    res = await engine.run(graph({"op": "Stage", "id": "llm_complete"}),
                           {"prompt": "hi", "model": None, "max_tokens": None, "temperature": None},
                           RunOptions())
    assert res.status == "failed" and res.error is not None
    assert res.error["code"] == "no_llm_provider"


async def test_remote_stage_calls_from_a_networked_sandbox(engine: Engine) -> None:
    import json

    from tests.fake_http import QuietHandler, served

    seen: list[object] = []

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            seen.append(body)
            self.send_json(200, {"ok": True, "command": "serve", "data": {"output": body["input"]["n"] * 10}})

    with served(Handler) as base:
        node = {"op": "RemoteStage", "url": base + "/", "input": {"Record": [["n", "Number"]]}, "output": "Number"}
        res = await engine.run(graph(node), {"n": 4}, RunOptions())
        assert res.status == "ok" and res.output == 40
        assert seen == [{"input": {"n": 4}}]


async def test_remote_stage_needs_network_granted(engine: Engine) -> None:
    import pytest

    from noether_nix.errors import NoetherError

    node = {"op": "RemoteStage", "url": "http://127.0.0.1:9/", "input": "Any", "output": "Any"}
    with pytest.raises(NoetherError) as ei:
        await engine.run(graph(node), 1, RunOptions(allow_effects=["fallible"]))
    assert ei.value.code == "effect_not_allowed"


async def test_refinements_are_checked_and_switchable(engine: Engine, add: AddStage) -> None:
    refined = {"kind": "Refined", "value": {"base": "Number", "refinement": {"kind": "Range", "min": 0, "max": 10}}}
    add("small", "def execute(x):\n    return x\n", input=refined, output="Number")
    g = graph({"op": "Stage", "id": "small"})
    res = await engine.run(g, 50, RunOptions())
    assert res.status == "failed" and res.error is not None
    assert res.error["code"] == "refinement_violation"
    assert "input refinement violation (Range(0..=10)): value 50 above maximum 10" in res.error["message"]
    off = await engine.run(g, 50, RunOptions(refinement_checks=False))
    assert off.status == "ok" and off.output == 50


async def test_a_stage_longer_than_ten_seconds_is_not_killed_on_an_idle_engine(engine: Engine, add: AddStage) -> None:
    # bwrap's --die-with-parent follows the forking *thread*; trio retires idle
    # worker threads after ~10 s. Sandboxes are forked from a thread that lives
    # as long as the engine, so a 12 s stage finishes.
    add("twelve", "import time\ndef execute(x):\n    time.sleep(12)\n    return x\n")
    res = await engine.run(graph({"op": "Stage", "id": "twelve"}), 7, RunOptions(timeout_secs=25))
    assert res.status == "ok", res.error
    assert res.output == 7


async def test_retry_attempts_are_numbered_in_events_and_trace(engine: Engine, add: AddStage) -> None:
    add("always_fails", "def execute(x):\n    raise ValueError('no')\n")
    seen: list[Event] = []

    async def watch(ev: Event) -> None:
        seen.append(ev)

    root = {"op": "Retry", "stage": {"op": "Stage", "id": "always_fails"}, "max_attempts": 3}
    res = await engine.run(graph(root), 1, RunOptions(), emit=watch)
    assert res.status == "failed"
    assert [e["attempt"] for e in res.trace["stages"]] == [1, 2, 3]
    assert [ev.attempt for ev in seen if isinstance(ev, StageStarted)] == [1, 2, 3]
