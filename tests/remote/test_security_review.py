"""Security review of the remote execution path: hostile submitters against a
worker (and its launcher), a hostile server against the daemon's executor.

Each test is named after its finding and fails on the code before the fix.
None needs the BuildGrid cluster: the worker's checks are called directly,
the launcher runs as a runner would run it, and the server is
``tests/remote/hostile.py``.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import msgspec
import pytest
import trio
from google.protobuf.any_pb2 import Any as PbAny

from noether_nix.engine.executor import StageCall
from noether_nix.errors import NoetherError
from noether_nix.model.effects import EffectSet, NonDeterministic
from noether_nix.nix.registry import ProgramRegistry
from noether_nix.remote import executor as executor_mod
from noether_nix.remote.action import (
    INPUT_FILE,
    LAUNCHER_ARGV,
    RESULT_FILE,
    LaunchResult,
    decode_spec,
    digest_of,
    encode_call,
    key_of,
)
from noether_nix.remote.client import Endpoint
from noether_nix.remote.executor import RemoteExecutor, RemoteSettings
from noether_nix.remote.launcher import LaunchRecord, WorkerGrants, admit, launch
from noether_nix.remote.protos import noether_reapi_pb2 as re
from noether_nix.remote.worker import LeaseFailed, Worker, WorkerSettings
from noether_nix.sandbox.policy import Limits
from tests.remote.hostile import HostileServer, operation

DOUBLE = "def execute(x):\n    return x * 2\n"
QUEUED, EXECUTING = 2, 3


def call(code: str = DOUBLE, value: Any = 21, *, program_id: str | None = None, pure: bool = True,
         limits: Limits | None = None) -> StageCall:
    return StageCall(program_id=program_id or "review-" + hashlib.sha256(code.encode()).hexdigest()[:16],
                     language="python", code=code, effects=EffectSet.pure() if pure else
                     EffectSet.of([NonDeterministic()]), input=value, limits=limits or Limits(), isolation="bwrap",
                     label="stage review")


def files_of(c: StageCall) -> dict[str, bytes]:
    """The input root of ``c``'s Action, as the launcher reads it."""
    enc = encode_call(c)
    root = re.Directory()
    root.ParseFromString(enc.blobs[key_of(enc.action.input_root_digest)])
    return {f.name: enc.blobs[key_of(f.digest)] for f in root.files}


# ---------------------------------------------------------------- the worker and its launcher


async def test_a_submitter_cannot_plant_code_under_another_stages_program_id(noether_home: Path) -> None:
    """program.json's id is the submitter's word: a worker that built and
    registered code under it ran the planted program for every later Action
    naming that id (and a Pure one's result went into the ActionCache)."""
    programs = ProgramRegistry(noether_home / "noether.db")
    victim = "a" * 64  # a stage id some honest client runs
    planted = call('def execute(x):\n    return "pwned"\n', 21, program_id=victim)
    honest = call(DOUBLE, 21, program_id=victim)
    rc, record = await launch(files_of(planted), programs=programs, grants=WorkerGrants())
    assert rc == 0 and msgspec.json.decode(record)["result"]["output"] == "pwned"
    rc, record = await launch(files_of(honest), programs=programs, grants=WorkerGrants())
    assert msgspec.json.decode(record)["result"]["output"] == 42, record
    assert rc == 0


@pytest.mark.parametrize(("name", "value"), [("max_file_size_bytes", -1), ("max_open_files", -1), ("max_pids", -1),
                                             ("memory_bytes", 0), ("timeout_s", -1.0), ("tmpfs_size_bytes", -1),
                                             ("max_output_bytes", 0)])
def test_a_worker_refuses_limits_below_one(name: str, value: float) -> None:
    """The launcher checked limits against the profile's maxima only: -1 is
    below every maximum, and RLIMIT_* -1 is RLIM_INFINITY (no file size,
    open file or process cap)."""
    limits = msgspec.structs.replace(Limits(), **{name: value})
    program, input_bytes, spec = decode_spec(files_of(call(limits=limits)))
    with pytest.raises(NoetherError) as e:
        admit(program, input_bytes, spec, WorkerGrants())
    assert e.value.code == "remote_refused" and name in e.value.message


def _launch_cli(d: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "noether_nix.cli.main", *LAUNCHER_ARGV[1:]], cwd=d,
                          capture_output=True, text=True, timeout=300)


def test_the_launcher_never_writes_through_a_result_json_in_its_input_root(tmp_path: Path) -> None:
    """A runner (Buildbarn's, any) materialises the input root and runs
    ``noether launch`` in it: a ``result.json`` symlink planted in the root
    made the launcher overwrite whatever file it pointed to."""
    d = tmp_path / "root"
    d.mkdir()
    for name, data in files_of(call()).items():
        (d / name).write_bytes(data)
    precious = tmp_path / "precious.txt"
    precious.write_text("the runner's own file\n")
    (d / RESULT_FILE).symlink_to(precious)
    proc = _launch_cli(d)
    assert precious.read_text() == "the runner's own file\n"
    assert proc.returncode == 0, proc.stderr
    assert not (d / RESULT_FILE).is_symlink()
    assert json.loads((d / RESULT_FILE).read_text())["result"]["output"] == 42


class _FakeCas:
    """What the worker reads blobs from: refuses to hand over anything huge
    (a real CAS would, and the worker would hold it all in memory)."""

    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.blobs = blobs
        self.asked: list[int] = []

    async def read_blobs(self, digests: list[Any]) -> dict[str, bytes]:
        self.asked += [d.size_bytes for d in digests]
        for d in digests:
            assert d.size_bytes <= 64 * 1024 * 1024, f"the worker asked the CAS for {d.size_bytes} bytes"
        return {key_of(d): self.blobs[key_of(d)] for d in digests}

    async def upload(self, blobs: dict[str, bytes]) -> None:
        return None


def _worker(cas: _FakeCas) -> Worker:
    w = Worker(WorkerSettings(endpoint=Endpoint(url="grpc://127.0.0.1:1"), runtimes=["python"]), programs=None)
    w.client = cas  # type: ignore[assignment]
    return w


HUGE = 8 * 1024 * 1024 * 1024


@pytest.mark.parametrize("what", ["input file", "input root", "command"])
async def test_a_worker_refuses_huge_blobs_before_fetching_them(what: str) -> None:
    """Digests name their size: a submitter's 8 GiB input was read whole into the worker's memory."""
    enc = encode_call(call())
    blobs = dict(enc.blobs)
    action = re.Action()
    action.CopyFrom(enc.action)
    fake = re.Digest(hash="f" * 64, size_bytes=HUGE)
    if what == "input file":
        root = re.Directory()
        root.ParseFromString(blobs[key_of(action.input_root_digest)])
        next(f for f in root.files if f.name == INPUT_FILE).digest.CopyFrom(fake)
        data = root.SerializeToString(deterministic=True)
        blobs[key_of(digest_of(data))] = data
        action.input_root_digest.CopyFrom(digest_of(data))
    elif what == "input root":
        action.input_root_digest.CopyFrom(fake)
    else:
        action.command_digest.CopyFrom(fake)
    payload = PbAny()
    payload.Pack(action)
    cas = _FakeCas(blobs)
    with pytest.raises(LeaseFailed) as e:
        await _worker(cas)._execute(payload)
    assert e.value.code == 3 and "bytes" in e.value.message  # INVALID_ARGUMENT
    assert all(n < HUGE for n in cas.asked)


# ---------------------------------------------------------------- the daemon's executor against a hostile server


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    server = HostileServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def remote(hostile: HostileServer) -> Any:
    ex = RemoteExecutor(RemoteSettings(url=hostile.url, queue_timeout_s=600, reconnect_s=5))
    try:
        yield ex
    finally:
        await ex.aclose()


async def test_an_operation_flapping_between_queued_and_executing_is_bounded(
        hostile: HostileServer, remote: RemoteExecutor, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every EXECUTING the server announced moved the deadline again: an
    operation that never finishes held the stage (and its run) forever."""
    monkeypatch.setattr(executor_mod, "WORKER_OVERHEAD_S", 1.0)

    def execute(req: Any, ctx: Any) -> Iterator[Any]:
        for i in range(2000):
            if not ctx.is_active():
                return
            yield operation("ops/flap", EXECUTING if i % 2 else QUEUED)
            time.sleep(0.05)

    hostile.execute = execute
    started = time.monotonic()
    with trio.fail_after(40), pytest.raises(NoetherError) as e:
        await remote.execute(call(pure=False, limits=Limits(timeout_s=1)))
    assert e.value.code == "remote_timed_out"
    assert time.monotonic() - started < 20


async def test_an_operation_the_server_keeps_losing_is_not_executed_forever(
        hostile: HostileServer, remote: RemoteExecutor) -> None:
    """A Pure call whose operation the server 'lost' was executed again, at
    once and without end (until the 10-minute queue timeout)."""

    def execute(req: Any, ctx: Any) -> Iterator[Any]:
        yield operation("ops/lost", QUEUED)
        ctx.abort(grpc.StatusCode.NOT_FOUND, "which operation?")

    hostile.execute = execute
    with trio.fail_after(40), pytest.raises(NoetherError) as e:
        await remote.execute(call())
    assert e.value.code == "remote_operation_lost"
    assert hostile.calls.get("Execute", 0) <= 5


def _result(digest: Any, *, contents: bytes = b"", md: Any = None) -> Any:
    out = re.OutputFile(path=RESULT_FILE, digest=digest, contents=contents)
    return re.ActionResult(exit_code=0, output_files=[out], execution_metadata=md or re.ExecutedActionMetadata())


async def test_a_huge_result_json_is_refused_unread(hostile: HostileServer, remote: RemoteExecutor) -> None:
    """The executor read result.json to whatever size the server's digest
    claimed, all of it into the daemon's memory."""
    big = 96 * 1024 * 1024
    digest = re.Digest(hash="0" * 64, size_bytes=big)
    hostile.action_result = lambda req: _result(digest)
    hostile.execute = lambda req, ctx: iter([operation("ops/big", response=re.ExecuteResponse(
        result=_result(digest)))])

    def read(name: str) -> Iterator[bytes]:
        chunk = b" " * (1 << 20)
        for _ in range(big >> 20):
            yield chunk

    hostile.read = read
    with trio.fail_after(60), pytest.raises(NoetherError) as e:
        await remote.execute(call())
    assert e.value.code == "remote_bad_result"
    assert hostile.bytes_served < 16 * 1024 * 1024


def _record(output: Any) -> bytes:
    return msgspec.json.encode(LaunchRecord(result=LaunchResult(status="ok", message="", isolation="bwrap",
                                                                output=output)))


async def test_inline_result_contents_must_match_their_digest(hostile: HostileServer, remote: RemoteExecutor) -> None:
    claimed = _record(42)
    hostile.action_result = lambda req: _result(digest_of(claimed), contents=_record("forged"))
    with trio.fail_after(30), pytest.raises(NoetherError) as e:
        await remote.execute(call())
    assert e.value.code == "remote_bad_result"


async def test_a_result_with_absurd_timestamps_is_still_a_result(hostile: HostileServer,
                                                                  remote: RemoteExecutor) -> None:
    """A timestamp past year 9999 raised OverflowError out of the executor
    (the run failed with internal_error instead of a result or a code)."""
    record = _record(42)
    md = re.ExecutedActionMetadata(worker="w")
    md.queued_timestamp.seconds = 2**62
    md.worker_start_timestamp.seconds = -(2**62)
    hostile.action_result = lambda req: _result(digest_of(record), contents=record, md=md)
    with trio.fail_after(30):
        outcome = await remote.execute(call())
    assert outcome.output == 42 and outcome.cached
    assert outcome.remote is not None and outcome.remote["queued_at"] is None


class _SlowBots:
    """CreateBotSession as a server too slow for the quick first call answers it."""

    def __init__(self, quick_fails: bool) -> None:
        self.quick_fails = quick_fails
        self.timeouts: list[float] = []

    async def create_bot_session(self, parent: str, session: Any, timeout: float = 60) -> Any:
        from noether_nix.remote.client import RpcFailed

        self.timeouts.append(timeout)
        if self.quick_fails and timeout < 60:
            raise RpcFailed("DEADLINE_EXCEEDED", "Deadline Exceeded")
        return session


@pytest.mark.parametrize("quick_fails", [False, True])
async def test_a_worker_registers_at_once_and_a_slow_server_gets_the_long_call(quick_fails: bool) -> None:
    """CreateBotSession is a long poll on BuildGrid (80 % of its deadline when no work waits):
    a worker took 12 s to be ready. It asks with a short deadline first, then the long one."""
    from noether_nix.remote.worker import CREATE_QUICK_S

    w = Worker(WorkerSettings(endpoint=Endpoint(url="grpc://127.0.0.1:1"), bot_id="b", runtimes=["python"]),
               programs=None)
    bots = _SlowBots(quick_fails)
    session = await w._create(bots)  # type: ignore[arg-type]
    assert session.bot_id == "b"
    assert bots.timeouts == ([CREATE_QUICK_S, 60] if quick_fails else [CREATE_QUICK_S])
