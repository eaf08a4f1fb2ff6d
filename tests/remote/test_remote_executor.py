"""Stage calls on a real BuildGrid cluster with two noether workers."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
import pytest
import trio

from noether_nix.engine.executor import StageCall
from noether_nix.errors import NoetherError
from noether_nix.model.effects import EffectSet, FsRead, Network, NonDeterministic, Pure
from noether_nix.nix.registry import ProgramRegistry
from noether_nix.paths import noether_home
from noether_nix.remote.action import (
    INPUT_FILE,
    PROGRAM_FILE,
    SANDBOX_FILE,
    SandboxSpec,
    action_digest,
    canonical,
    digest_of,
    encode_call,
    key_of,
)
from noether_nix.remote.client import Endpoint, Progress, ReapiClient
from noether_nix.remote.executor import RemoteExecutor, RemoteSettings
from noether_nix.remote.launcher import run_local
from noether_nix.remote.protos import noether_reapi_pb2 as re
from noether_nix.sandbox.policy import Bind, Limits
from tests.remote.conftest import Cluster

DOUBLE = "def execute(x):\n    return x * 2\n"


def call(code: str = DOUBLE, value: Any = 21, *, effects: EffectSet | None = None, language: str = "python",
         program_id: str | None = None, limits: Limits | None = None, **kw: Any) -> StageCall:
    return StageCall(program_id=program_id or "test-" + hashlib.sha256((language + code).encode()).hexdigest()[:16], language=language, code=code,
                     effects=effects or EffectSet.pure(), input=value, limits=limits or Limits(), isolation="bwrap",
                     label="stage test", **kw)


# ---------------------------------------------------------------- encoding (no cluster)

# Pinned: a change here changes every cache key (the Action's bytes, the
# launcher protocol, or the walls the default profile derives), so it must be
# deliberate. Computed on one host, checked on every other.
GOLDEN = [
    (StageCall(program_id="golden-double", language="python", code=DOUBLE, effects=EffectSet.pure(), input=21,
               limits=Limits(), isolation="bwrap", label="x"),
     "c634078d6be000dc90fac7e225365c1a6ce7675bb1e88d3fded8c9a71ce22fd6/216"),
    (StageCall(program_id="golden-net", language="python", code=DOUBLE,
               effects=EffectSet.of([Network(), NonDeterministic()]), input={"url": "http://x"},
               limits=Limits(timeout_s=5), isolation="bwrap", label="x"),
     "6c4ad46501bfd6614532cac09c23bc7dc19f6b56b4c412faa1f9050d24009c7e/247"),
    (StageCall(program_id="golden-bash", language="bash", code="read x; echo $((x + 1))", effects=EffectSet.pure(),
               input=1, limits=Limits(), isolation="bwrap", label="y", env={"A": "b"}, clear_env=True),
     "1e6372420391f31763085633d8406b697a25b8404a81358890ceead24b50d651/214"),
]


@pytest.mark.parametrize(("stage_call", "digest"), GOLDEN)
def test_golden_action_digests(stage_call: StageCall, digest: str) -> None:
    """The Action is a function of the call alone: these digests are the
    cache keys any client computes for these calls, on any host."""
    assert action_digest(stage_call) == digest
    # The label and the host user are not part of what runs.
    assert action_digest(msgspec.structs.replace(stage_call, label="other")) == digest


def test_action_says_what_a_worker_needs() -> None:
    pure = encode_call(call())
    assert pure.cacheable and not pure.action.do_not_cache
    assert ("noether-runtime", "python") in pure.platform and ("noether-network", "allowed") not in pure.platform
    net = encode_call(call(effects=EffectSet.of([Network()])))
    assert not net.cacheable and net.action.do_not_cache
    assert ("noether-network", "allowed") in net.platform
    nd = encode_call(call(effects=EffectSet.of([Pure(), NonDeterministic()])))
    assert nd.action.do_not_cache
    assert pure.action.timeout.seconds == 30
    assert list(pure.command.arguments) == ["noether", "launch", "--protocol", "1"]


def test_a_policy_this_host_cannot_derive_is_an_error() -> None:
    with pytest.raises(NoetherError) as e:
        encode_call(call(effects=EffectSet.of([FsRead(path="/nonexistent/data")])))
    assert e.value.code == "policy_path_missing"


# ---------------------------------------------------------------- on the cluster

@pytest.fixture
async def executor(cluster: Cluster) -> Any:
    ex = RemoteExecutor(RemoteSettings(url=cluster.url, queue_timeout_s=60))
    try:
        yield ex
    finally:
        await ex.aclose()


async def local(c: StageCall) -> Any:
    home = noether_home()
    home.mkdir(parents=True, exist_ok=True)
    return await run_local(c, programs=ProgramRegistry(home / "noether.db"), profile="default")


PARITY = [
    call(DOUBLE, 21),
    call("def execute(x):\n    return {'n': len(x), 'u': x.upper()}\n", "héllo wörld"),
    call("read x; echo \"[$x, $((x * 3))]\"", 7, language="bash"),
    call("def execute(x):\n    raise ValueError('bad input ' + str(x))\n", 3),
    call("import sys\ndef execute(x):\n    print('to stderr', file=sys.stderr)\n    return [x, None, True]\n", 1.5),
    call("def execute(x):\n    return 'y' * x\n", 2000, limits=Limits(max_output_bytes=1000)),
    call("import time\ndef execute(x):\n    time.sleep(x)\n", 10, limits=Limits(timeout_s=1)),
]


@pytest.mark.parametrize("stage_call", PARITY, ids=["double", "text", "bash", "raises", "stderr", "output_limit",
                                                    "timeout"])
async def test_remote_outcome_is_the_local_one(executor: RemoteExecutor, stage_call: StageCall) -> None:
    remote = await executor.execute(stage_call)
    here = await local(stage_call)
    assert (remote.status, remote.output, remote.message, remote.isolation) == \
           (here.status, here.output, here.message, here.isolation)
    assert remote.remote is not None and remote.remote["worker"] in ("worker-1", "worker-2")
    assert remote.remote["action_digest"] == action_digest(stage_call)


async def test_many_calls_at_once_spread_over_both_workers(executor: RemoteExecutor) -> None:
    code = "def execute(x):\n    return x + 1000\n"
    results: dict[int, Any] = {}

    async def one(i: int) -> None:
        results[i] = await executor.execute(call(code, i, effects=EffectSet.of([NonDeterministic()])))

    async with trio.open_nursery() as n:
        for i in range(24):
            n.start_soon(one, i)
    bad = [r for i, r in results.items() if r.output != i + 1000]
    assert not bad, bad[:3]
    assert {r.remote["worker"] for r in results.values()} == {"worker-1", "worker-2"}


async def test_second_run_of_a_pure_call_comes_from_the_action_cache(executor: RemoteExecutor,
                                                                    cluster: Cluster) -> None:
    c = call("def execute(x):\n    return sorted(x)\n", [3, 1, 2])
    first = await executor.execute(c)
    second = await executor.execute(c)
    assert first.output == second.output == [1, 2, 3]
    assert not first.cached and second.cached
    assert second.remote is not None and second.remote["operation"] is None  # one ActionCache round trip


async def test_a_call_without_cache_runs_on_a_worker_even_when_the_action_cache_has_it(
        executor: RemoteExecutor, cluster: Cluster) -> None:
    c = call("def execute(x):\n    return sorted(x, reverse=True)\n", [3, 1, 2])
    first = await executor.execute(c)
    fresh = await executor.execute(msgspec.structs.replace(c, use_cache=False))
    again = await executor.execute(c)
    assert first.output == fresh.output == again.output == [3, 2, 1]
    assert not first.cached and not fresh.cached and again.cached
    assert fresh.remote is not None and fresh.remote["operation"] is not None  # executed, not looked up


async def test_impure_and_failed_calls_are_never_cached(executor: RemoteExecutor, cluster: Cluster) -> None:
    impure = call("import random\ndef execute(x):\n    return random.random()\n", None,
                  effects=EffectSet.of([NonDeterministic()]))
    a = await executor.execute(impure)
    b = await executor.execute(impure)
    assert not a.cached and not b.cached and a.output != b.output
    failing = call("def execute(x):\n    raise RuntimeError('no')\n", 5)
    f1 = await executor.execute(failing)
    f2 = await executor.execute(failing)
    assert f1.status == f2.status == "error" and not f2.cached
    async with ReapiClient(Endpoint(url=cluster.url)) as client:
        for c in (impure, failing):
            assert await client.get_action_result(encode_call(c).action_digest) is None


# ---------------------------------------------------------------- the worker runs only the launcher

def _forge(enc: Any, *, argv: list[str] | None = None, files: dict[str, bytes] | None = None) -> tuple[Any, dict]:
    """A hand-made Action from a real one: another argv, or other input files."""
    blobs = dict(enc.blobs)
    root = re.Directory()
    root.ParseFromString(blobs[key_of(enc.action.input_root_digest)])
    if files:
        for node in root.files:
            if node.name in files:
                data = files[node.name]
                node.digest.CopyFrom(digest_of(data))
                blobs[key_of(node.digest)] = data
    command = re.Command()
    command.CopyFrom(enc.command)
    if argv is not None:
        del command.arguments[:]
        command.arguments.extend(argv)
    action = re.Action()
    action.CopyFrom(enc.action)
    for msg, field in ((root, "input_root_digest"), (command, "command_digest")):
        data = msg.SerializeToString(deterministic=True)
        getattr(action, field).CopyFrom(digest_of(data))
        blobs[key_of(digest_of(data))] = data
    data = action.SerializeToString(deterministic=True)
    blobs[key_of(digest_of(data))] = data
    return digest_of(data), blobs


async def _run_forged(cluster: Cluster, digest: Any, blobs: dict) -> Any:
    from google.longrunning.operations_proto_pb2 import Operation  # noqa: F401

    async with ReapiClient(Endpoint(url=cluster.url)) as client:
        await client.upload(blobs)
        with trio.fail_after(60):
            op = await client.execute(digest, skip_cache_lookup=True, progress=Progress())
    resp = re.ExecuteResponse()
    assert op.response.Unpack(resp)
    return resp


async def test_worker_refuses_any_other_command(cluster: Cluster, tmp_path: Any) -> None:
    marker = tmp_path / "pwned"
    enc = encode_call(call(effects=EffectSet.of([NonDeterministic()])))
    digest, blobs = _forge(enc, argv=["noether", "sh", "-c", f"touch {marker}"])
    resp = await _run_forged(cluster, digest, blobs)
    assert resp.status.code == 3 and "refused" in resp.status.message
    assert not marker.exists()


async def test_worker_refuses_a_policy_wider_than_the_effects(cluster: Cluster) -> None:
    """A client cannot hand a worker its own walls: a bind its effects do not derive is refused."""
    c = call("import socket\ndef execute(x):\n    return 1\n", 0, effects=EffectSet.of([NonDeterministic()]))
    enc = encode_call(c)
    spec = msgspec.json.decode(enc.blobs[key_of(_file_digest(enc, SANDBOX_FILE))], type=SandboxSpec)
    binds = [*spec.policy.ro_binds, Bind(host="/etc", sandbox="/etc")]
    wider = msgspec.structs.replace(spec, policy=msgspec.structs.replace(spec.policy, ro_binds=binds))
    digest, blobs = _forge(enc, files={SANDBOX_FILE: canonical(wider)})
    resp = await _run_forged(cluster, digest, blobs)
    assert resp.status.code == 0
    out = next(f for f in resp.result.output_files if f.path == "result.json")
    async with ReapiClient(Endpoint(url=cluster.url)) as client:
        record = msgspec.json.decode((await client.read_blobs([out.digest]))[key_of(out.digest)])
    assert record["error"]["code"] == "remote_refused"
    assert "policy" in record["error"]["message"]
    assert resp.result.exit_code == 2


def _file_digest(enc: Any, name: str) -> Any:
    root = re.Directory()
    root.ParseFromString(enc.blobs[key_of(enc.action.input_root_digest)])
    return next(f.digest for f in root.files if f.name == name)


def test_input_root_names() -> None:
    assert {INPUT_FILE, PROGRAM_FILE, SANDBOX_FILE} == {"input.json", "program.json", "sandbox.json"}


def test_the_remote_executor_is_a_setting_and_needs_a_cluster() -> None:
    from noether_nix.engine.engine import Engine
    from noether_nix.settings import build

    with pytest.raises(NoetherError) as e:
        build({}, {"NOETHER_EXECUTOR": "remote"})
    assert e.value.code == "invalid_config" and "url" in e.value.message
    s = build({}, {"NOETHER_EXECUTOR": "remote", "NOETHER_REAPI": "grpc://127.0.0.1:1", "NOETHER_REAPI_INSTANCE": "x"})
    assert (s.engine.executor, s.engine.remote.url, s.engine.remote.instance) == ("remote", "grpc://127.0.0.1:1", "x")
    assert isinstance(Engine(s.engine).executor, RemoteExecutor)
    assert not isinstance(Engine(build({}, {}).engine).executor, RemoteExecutor)
