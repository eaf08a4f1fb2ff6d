"""Faults on a real cluster, each bounded in time and cleaning up after itself."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import pytest
import trio

from noether_nix.engine.executor import StageCall
from noether_nix.errors import NoetherError
from noether_nix.model.effects import EffectSet, Network, NonDeterministic
from noether_nix.remote.action import INPUT_FILE, decode_spec, encode_call, key_of
from noether_nix.remote.executor import RemoteExecutor, RemoteSettings
from noether_nix.remote.launcher import WorkerGrants, admit
from noether_nix.remote.protos import noether_reapi_pb2 as re
from noether_nix.sandbox.policy import Limits
from tests.remote.cluster import Worker
from tests.remote.conftest import Cluster

SLOW = "import time\ndef execute(x):\n    time.sleep(x['sleep'])\n    return x['n'] * 10\n"


def call(code: str, value: Any, effects: EffectSet | None = None, isolation: str = "bwrap") -> StageCall:
    return StageCall(program_id="fault-" + hashlib.sha256(code.encode()).hexdigest()[:16], language="python",
                     code=code, effects=effects or EffectSet.pure(), input=value, limits=Limits(),
                     isolation=isolation, label="stage fault", )  # type: ignore[arg-type]


@pytest.fixture
async def executor(cluster: Cluster) -> Any:
    ex = RemoteExecutor(RemoteSettings(url=cluster.url, queue_timeout_s=90, reconnect_s=60))
    try:
        yield ex
    finally:
        await ex.aclose()


def started_leases(w: Worker) -> int:
    return sum(1 for e in w.events() if e.get("event") == "lease_started")


async def wait_for_lease(workers: list[Worker], before: dict[str, int], timeout: float = 30) -> Worker:
    with trio.fail_after(timeout):
        while True:
            for w in workers:
                if started_leases(w) > before[w.bot_id]:
                    return w
            await trio.sleep(0.1)


def live(cluster: Cluster) -> list[Worker]:
    return [w for w in cluster.workers if w.proc is not None and w.proc.poll() is None]


async def test_a_worker_killed_mid_action_is_replaced_by_the_other(cluster: Cluster, executor: RemoteExecutor
                                                                  ) -> None:
    workers = live(cluster)
    before = {w.bot_id: started_leases(w) for w in workers}
    out: dict[str, Any] = {}
    started = time.monotonic()
    with trio.fail_after(90):
        async with trio.open_nursery() as n:
            async def run() -> None:
                out["o"] = await executor.execute(call(SLOW, {"sleep": 4, "n": 1},
                                                       EffectSet.of([NonDeterministic()])))

            n.start_soon(run)
            victim = await wait_for_lease(workers, before)
            victim.kill9()
    o = out["o"]
    assert o.status == "ok" and o.output == 10
    assert o.remote["worker"] != victim.bot_id
    assert time.monotonic() - started < 60
    cluster.add_worker(f"{victim.bot_id}-again")


async def test_a_server_restart_mid_run_resumes(cluster: Cluster, executor: RemoteExecutor) -> None:
    workers = live(cluster)
    before = {w.bot_id: started_leases(w) for w in workers}
    out: dict[str, Any] = {}
    with trio.fail_after(150):
        async with trio.open_nursery() as n:
            async def run() -> None:
                try:
                    out["o"] = await executor.execute(call(SLOW, {"sleep": 3, "n": 2}))
                except NoetherError as e:
                    out["e"] = e

            n.start_soon(run)
            await wait_for_lease(workers, before)
            await trio.to_thread.run_sync(cluster.bg.restart)
    if "e" in out:
        # The server may lose the job with the bot it was assigned to (BuildGrid
        # reaps a bot session that expired while it was down): then the run fails,
        # bounded, with a code that says so, never hangs.
        assert out["e"].code in ("remote_failed", "remote_timed_out"), out["e"]
    else:
        assert out["o"].status == "ok" and out["o"].output == 20
        assert out["o"].remote["reconnects"] >= 1  # it followed the operation across the restart
    # The cluster serves new work after the restart.
    with trio.fail_after(60):
        again = await executor.execute(call(SLOW, {"sleep": 0, "n": 3}))
    assert again.output == 30


async def test_an_evicted_blob_is_uploaded_again(cluster: Cluster, executor: RemoteExecutor) -> None:
    c = call(SLOW, {"sleep": 0, "n": 4})
    enc = encode_call(c)
    client = await executor.client()
    await client.upload(enc.blobs)
    root = re.Directory()
    root.ParseFromString(enc.blobs[key_of(enc.action.input_root_digest)])
    input_digest = next(f.digest for f in root.files if f.name == INPUT_FILE)
    assert cluster.bg.evict(input_digest.hash)
    # The CAS said it had everything a moment ago (a stale answer): the worker
    # finds the input gone, the executor uploads it again and runs it again.
    real = client.find_missing
    calls = []

    async def stale(digests: Any) -> list[Any]:
        calls.append(1)
        return [] if len(calls) == 1 else await real(digests)

    client.find_missing = stale  # type: ignore[method-assign]
    try:
        with trio.fail_after(60):
            o = await executor.execute(c)
    finally:
        client.find_missing = real  # type: ignore[method-assign]
    assert o.status == "ok" and o.output == 40
    assert len(calls) == 2
    # Evicted while the client knows it: FindMissingBlobs finds it, one upload.
    assert cluster.bg.evict(input_digest.hash)
    c2 = call(SLOW, {"sleep": 0, "n": 4}, EffectSet.of([NonDeterministic()]))
    with trio.fail_after(60):
        o2 = await executor.execute(c2)
    assert o2.output == 40


async def test_an_action_no_worker_can_satisfy_waits_then_fails_clearly(cluster: Cluster) -> None:
    ex = RemoteExecutor(RemoteSettings(url=cluster.url, queue_timeout_s=4))
    net = call("def execute(x):\n    return 'net ' + str(x)\n", 1, EffectSet.of([Network()]))
    unsandboxed = call("def execute(x):\n    return 1\n", 1, isolation="none")
    before = {w.bot_id: started_leases(w) for w in live(cluster)}
    try:
        for c in (net, unsandboxed):
            started = time.monotonic()
            with trio.fail_after(30), pytest.raises(NoetherError) as e:
                await ex.execute(c)
            assert e.value.code == "remote_no_worker"
            assert "noether-network=allowed" in e.value.message or "noether-isolation=none" in e.value.message
            assert 3.5 < time.monotonic() - started < 20
        assert {w.bot_id: started_leases(w) for w in live(cluster)} == before  # nothing ran anywhere
        # A worker that grants the network takes it; the others still never see it.
        cluster.add_worker("worker-net", "--network")
        with trio.fail_after(60):
            o = await ex.execute(net)
        assert o.output == "net 1" and o.remote is not None and o.remote["worker"] == "worker-net"
    finally:
        await ex.aclose()


def test_a_worker_never_runs_an_action_unsandboxed_unless_its_operator_says_so() -> None:
    enc = encode_call(call("def execute(x):\n    return 1\n", 1, isolation="none"))
    root = re.Directory()
    root.ParseFromString(enc.blobs[key_of(enc.action.input_root_digest)])
    files = {f.name: enc.blobs[key_of(f.digest)] for f in root.files}
    program, data, spec = decode_spec(files)
    with pytest.raises(NoetherError) as e:
        admit(program, data, spec, WorkerGrants())
    assert e.value.code == "remote_refused" and "bwrap" in e.value.message
    assert admit(program, data, spec, WorkerGrants(allow_unsandboxed=True)).isolation == "none"
