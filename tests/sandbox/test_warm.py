"""Warm sandboxes (``sandbox.warm``): a call of a warm sandbox sees nothing of
the calls before it, holds nothing a cold sandbox would not, and the pool
stays bounded. (The whole escape suite runs on both paths: ``probe`` in
conftest.py is parametrised cold / warm.)"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from noether_nix.model.effects import EffectSet
from noether_nix.sandbox import landlock
from noether_nix.sandbox.identity import RunAs
from noether_nix.sandbox.policy import Limits, policy_from_effects
from noether_nix.sandbox.profile import load_profile
from noether_nix.sandbox.supervisor import Result, Status
from noether_nix.sandbox.warm import WarmPool, python_target
from tests.processes import running
from tests.sandbox.conftest import survivors

#: Each call reports what it can see of earlier calls, then leaves a trace of
#: every kind behind: files, IPC objects, a process, module state, the
#: environment, signal dispositions, rlimits, the working directory.
LEAVE_AND_LOOK = r"""
import ctypes, json, os, random, resource, signal, socket, sys, time, uuid
libc = ctypes.CDLL(None, use_errno=True)
seen = {}
seen["work"] = sorted(os.listdir("/work"))
seen["tmp"] = sorted(os.listdir("/tmp"))
seen["shm"] = sorted(os.listdir("/dev/shm"))
seen["sysv"] = {k: open("/proc/sysvipc/" + k).read().splitlines()[1:] for k in ("shm", "msg", "sem")}
mq = libc.mq_open(b"/noether-warm-mq", os.O_RDONLY)  # exists only if an earlier call made it
seen["mq"] = mq >= 0
seen["procs"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
seen["json_mark"] = getattr(json, "noether_mark", None)
seen["builtin_mark"] = hasattr(__builtins__, "noether_mark") if not isinstance(__builtins__, dict) else "noether_mark" in __builtins__
seen["modules"] = "noether_warm_leftover" in sys.modules or "xml.dom.minidom" in sys.modules
seen["env"] = os.environ.get("NOETHER_LEFTOVER")
seen["sigusr1"] = signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN
seen["sigint"] = signal.getsignal(signal.SIGINT) is signal.default_int_handler
seen["nofile"] = resource.getrlimit(resource.RLIMIT_NOFILE)
seen["cwd"] = os.getcwd()
seen["umask"] = os.umask(0o022)
seen["random"] = [random.random(), os.urandom(8).hex(), str(uuid.uuid4())]
abstract = socket.socket(socket.AF_UNIX)
try:
    abstract.bind(b"\0noether-warm-abstract")
    seen["abstract_free"] = True
except OSError:
    seen["abstract_free"] = False
seen["name"] = __name__
seen["argv"] = sys.argv[:1]
# Leave something of every kind behind.
for d in ("/work", "/tmp", "/dev/shm"):
    open(d + "/left-behind", "w").write("x")
libc.shmget(0x4e4f4554, 4096, 0o1600)  # IPC_CREAT | 0600
libc.msgget(0x4e4f4554, 0o1600)
libc.semget(0x4e4f4554, 1, 0o1600)
fd = libc.mq_open(b"/noether-warm-mq", os.O_CREAT | os.O_RDWR, 0o600, None)
seen["mq_created"] = fd >= 0
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            time.sleep(0.1)
    os._exit(0)
json.noether_mark = "from an earlier call"
import builtins
builtins.noether_mark = 1
sys.modules["noether_warm_leftover"] = sys
import xml.dom.minidom
os.environ["NOETHER_LEFTOVER"] = "1"
signal.signal(signal.SIGUSR1, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_NOFILE, (17, 17))
os.umask(0o000)
os.chdir("/tmp")
print(json.dumps(seen))
"""


def pure_policy() -> Any:
    return policy_from_effects(EffectSet.pure(), profile=load_profile())


async def calls(pool: WarmPool, argv: list[str], n: int, **kw: Any) -> list[Result]:
    out = []
    for _ in range(n):
        r = await pool.run(argv, policy=kw.pop("policy", pure_policy()), limits=kw.get("limits", Limits(timeout_s=10)),
                           profile=load_profile(), stdin=b"null", **{k: v for k, v in kw.items() if k != "limits"})
        assert r is not None, pool.counters
        out.append(r)
    return out


async def test_a_warm_call_sees_nothing_of_the_previous_call(python_runtime: str) -> None:
    marker = "noether-warm-leftovers"
    pool = WarmPool(max_sandboxes=1)
    try:
        first, second, third = await calls(pool, [python_runtime, "-c", f"# {marker}\n{LEAVE_AND_LOOK}"], 3)
    finally:
        await pool.aclose()
    assert survivors(marker) == []
    assert pool.counters["started"] == 1 and pool.counters["reused"] == 2, pool.counters  # one host served all three
    looks = [json.loads(r.stdout_bytes or b"null") if r.output is None else r.output for r in (first, second, third)]
    assert all(r.status is Status.OK for r in (first, second, third)), [r.message for r in (first, second, third)]
    assert looks[0]["mq_created"], "the probe could not create a POSIX message queue: it proves nothing"
    for look in looks:
        assert look["work"] == [] and look["tmp"] == [] and look["shm"] == [], look  # files
        assert look["sysv"] == {"shm": [], "msg": [], "sem": []} and look["mq"] is False, look  # IPC
        assert look["abstract_free"] is True
        assert len(look["procs"]) <= 3, look["procs"]  # bwrap's init, the host, this call: no leftover process
        assert look["json_mark"] is None and look["builtin_mark"] is False and look["modules"] is False  # globals
        assert look["env"] is None and look["sigusr1"] is False and look["sigint"] is True
        assert look["nofile"][0] != 17 and look["cwd"] == "/work" and look["umask"] != 0
        assert look["name"] == "__main__" and look["argv"] == ["-c"]
    randoms = [tuple(look["random"]) for look in looks]
    for i in range(3):  # every source of randomness differs between calls
        assert len({r[i] for r in randoms}) == 3, randoms


async def test_a_call_has_no_capability_and_the_full_filter(python_runtime: str) -> None:
    code = ("import json\nprint(json.dumps({l.split(':')[0]: l.split(':')[1].strip() for l in "
            "open('/proc/self/status').read().splitlines() if l.startswith(('Cap', 'Seccomp', 'NoNew'))}))")
    pool = WarmPool(max_sandboxes=1)
    try:
        (r,) = await calls(pool, [python_runtime, "-c", code], 1)
    finally:
        await pool.aclose()
    status = r.output
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[cap], 16) == 0, status
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    assert int(status["Seccomp_filters"]) == 2  # the host's, and the full one on top


async def test_a_call_cannot_touch_its_host(python_runtime: str) -> None:
    """Neither its memory (ptrace, /proc/PID/mem) nor, with Landlock scoping, a signal."""
    code = r"""
import json, os, signal
host = os.getppid()
out = {}
try:
    open("/proc/%d/mem" % host, "rb").read(1); out["mem"] = "read"
except OSError as e:
    out["mem"] = e.errno
try:
    os.listdir("/proc/%d/fd" % host); out["fds"] = "listed"
except OSError as e:
    out["fds"] = e.errno
try:
    os.kill(host, signal.SIGSTOP); out["signal"] = "sent"
except OSError as e:
    out["signal"] = e.errno
try:
    os.kill(1, signal.SIGKILL); out["init"] = "sent"
except OSError as e:
    out["init"] = e.errno
print(json.dumps(out))
"""
    pool = WarmPool(max_sandboxes=1)
    try:
        first, second = await calls(pool, [python_runtime, "-c", code], 2)
    finally:
        await pool.aclose()
    assert first.output["mem"] != "read" and first.output["fds"] != "listed", first.output
    if landlock.available():
        assert first.output["signal"] == 1 and first.output["init"] == 1, first.output  # EPERM: out of its domain
    assert second.status is Status.OK and pool.counters["reused"] == 1  # the host served on


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


async def _spare(marker: str) -> int:
    """The pid of the idle sandbox's next-call child: bwrap -> the host -> it (all carry the marker)."""
    with trio.fail_after(10):
        while True:
            pids = set(survivors(marker))
            for pid in pids:
                with contextlib.suppress(OSError, KeyError):
                    parent = int(_status(pid)["PPid"])
                    if parent in pids and int(_status(parent)["PPid"]) in pids:
                        return pid
            await trio.sleep(0.02)


async def test_the_next_calls_child_waits_isolated_and_ends_with_its_sandbox(python_runtime: str) -> None:
    """The child forked ahead for the next call holds no capability and the full filter in a mount
    namespace of its own while it waits; one that dies idle is replaced; it is gone with its sandbox."""
    marker = f"noether-spare-{os.getpid()}-{time.monotonic_ns()}"
    argv = [python_runtime, "-c", f"# {marker}\nimport json, os\nprint(json.dumps(os.getpid()))"]
    for end in ("expire", "close"):
        pool = WarmPool(max_sandboxes=1, idle_s=30)
        try:
            (first,) = await calls(pool, argv, 1)
            spare = await _spare(marker)
            with trio.fail_after(10):  # forked as the call ended: it may still be isolating itself
                while (status := _status(spare))["Seccomp_filters"] != "2" or not status["State"].startswith("S"):
                    await trio.sleep(0.01)
            for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
                assert int(status[cap], 16) == 0, status
            assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2" and status["Seccomp_filters"] == "2"
            host = int(status["PPid"])
            assert os.readlink(f"/proc/{spare}/ns/mnt") != os.readlink(f"/proc/{host}/ns/mnt")
            assert os.readlink(f"/proc/{spare}/ns/ipc") != os.readlink(f"/proc/{host}/ns/ipc")
            os.kill(spare, signal.SIGKILL)  # one that dies idle: the next call still runs, in a new child
            with trio.fail_after(10):
                while running(spare):
                    await trio.sleep(0.01)
            (second,) = await calls(pool, argv, 1)
            assert second.status is Status.OK and second.output != first.output
            assert pool.counters["started"] == 1 and pool.counters["reused"] == 1, pool.counters
            spare = await _spare(marker)
            if end == "expire":
                assert await pool.expire(now=time.monotonic() + 31) == 1
            else:
                await pool.aclose()
            assert not running(spare) and survivors(marker) == []
        finally:
            await pool.aclose()


async def test_a_timeout_kills_the_warm_sandbox_and_the_next_call_starts_fresh(python_runtime: str) -> None:
    code = "import json, sys, time\nif json.load(sys.stdin) == 'slow':\n    time.sleep(30)\nprint(json.dumps('ok'))"
    pool = WarmPool(max_sandboxes=1)
    argv = [python_runtime, "-c", code]
    how: dict[str, Any] = {"policy": pure_policy(), "limits": Limits(timeout_s=1), "profile": load_profile()}
    try:
        slow = await pool.run(argv, stdin=b'"slow"', **how)
        assert slow is not None and slow.status is Status.TIMED_OUT
        fast = await pool.run(argv, stdin=b'"fast"', **how)
        assert fast is not None and fast.output == "ok"
        assert pool.counters["started"] == 2 and pool.counters["broken"] == 1, pool.counters
    finally:
        await pool.aclose()


async def test_the_pool_is_bounded_and_idle_sandboxes_expire(python_runtime: str) -> None:
    pool = WarmPool(max_sandboxes=1, idle_s=30)
    a = [python_runtime, "-c", "print(1)"]
    b = [python_runtime, "-c", "print(2)"]
    try:
        await calls(pool, a, 1)
        await calls(pool, b, 1)  # the one sandbox a used makes room for b's
        assert pool.counters["evicted"] == 1 and pool.size == 1
        described = pool.describe()
        assert len(described["idle"]) == 1 and described["idle"][0]["calls"] == 1
        assert await pool.expire(now=time.monotonic()) == 0  # not idle long enough yet
        assert await pool.expire(now=time.monotonic() + 31) == 1
        assert pool.size == 0 and pool.counters["expired"] == 1
    finally:
        await pool.aclose()


async def test_serve_expires_idle_sandboxes_without_polling(python_runtime: str) -> None:
    pool = WarmPool(max_sandboxes=2, idle_s=1.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pool.serve)
        await calls(pool, [python_runtime, "-c", "print(1)"], 1)
        assert pool.size == 1
        with trio.fail_after(10):
            while pool.size:
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert pool.counters["expired"] == 1
    # It slept until the pool changed and until the sandbox was due: a handful of wake-ups, not a spin.
    assert pool.wakeups <= 5, pool.wakeups
    await pool.aclose()


async def test_peers_never_share_a_warm_sandbox(python_runtime: str, tmp_path: Path) -> None:
    """A call for another host user gets a sandbox of its own (started as that user)."""
    if os.geteuid() != 0:
        pytest.skip("only root starts sandboxes for other users")
    code = "import json, os\nprint(json.dumps(os.getuid()))"
    pool = WarmPool(max_sandboxes=4)
    argv = [python_runtime, "-c", code]
    try:
        await calls(pool, argv, 1)  # root's own: a dedicated sandbox user
        await calls(pool, argv, 1, run_as=RunAs(uid=65534, gid=65534))
        await calls(pool, argv, 1)
        assert pool.counters["started"] == 2 and pool.counters["reused"] == 1, pool.counters
        peers = sorted(str(s["peer_uid"]) for s in pool.describe()["idle"])
        assert peers == ["65534", "None"]
    finally:
        await pool.aclose()


def test_only_python_programs_a_host_can_start_alike_go_warm(tmp_path: Path) -> None:
    script = tmp_path / "stage"
    script.write_text("#!/nix/store/x-python/bin/python3\nprint(1)\n")
    flagged = tmp_path / "flagged"
    flagged.write_text("#!/nix/store/x-python/bin/python3 -S\nprint(1)\n")
    shell = tmp_path / "sh"
    shell.write_text("#!/bin/bash\necho 1\n")
    assert python_target([str(script)]) == ("/nix/store/x-python/bin/python3", [str(script)])
    assert python_target(["/x/bin/python3", "-c", "print(1)", "a"]) == ("/x/bin/python3", ["-c", "print(1)", "a"])
    for argv in ([str(flagged)], [str(shell)], ["/x/bin/python3", "-I", "-c", "x"], ["/x/bin/python3", "-c"],
                 ["--ro-bind", "/", "/host"], []):
        assert python_target(argv) is None, argv


async def test_a_sandbox_that_cannot_go_warm_runs_cold(python_runtime: str) -> None:
    """A program the warm host cannot run is reported as such: the caller runs it cold."""
    pool = WarmPool(max_sandboxes=1)
    try:
        got = await pool.run([python_runtime, "-I", "-c", "print(1)"], policy=pure_policy(),
                             limits=Limits(timeout_s=5), profile=load_profile(), stdin=b"")
        assert got is None
    finally:
        await pool.aclose()



#: Reaches for what every call of one warm sandbox shares (its host's mounts, through any
#: process's /proc/PID/root or cwd), leaves a file there, then tries to end or stop the host.
REACH_THROUGH_PROC = r"""
import json, os, signal, sys
first = json.load(sys.stdin) == "first"
me = os.getpid()
others = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != me]
seen, left = [], []
for pid in others:
    for base in ("/proc/%d/root" % pid, "/proc/%d/cwd" % pid):
        for d in ("", "/tmp", "/work", "/dev/shm"):
            path = base + d
            try:
                seen += [path + "/" + n for n in os.listdir(path) if n.startswith("noether-left")]
            except OSError:
                continue
            if first:
                try:
                    open(path + "/noether-left-by-an-earlier-call", "w").write("x")
                    left.append(path)
                except OSError:
                    pass
if first:
    for pid in others:
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
print(json.dumps({"seen": seen, "left": left, "others": others}))
"""


async def test_without_landlock_scoping_a_call_reaches_nothing_its_host_keeps(
        python_runtime: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a kernel without Landlock ABI 6 (before 6.12) there is no per-call domain: the
    call must still find no way into the mounts its host (and so the next call) shares.
    bwrap's init was such a way: dumpable, the sandbox's own uid, holding no capability,
    so a call could write to /proc/1/root/tmp and the next call read it."""
    monkeypatch.setattr(landlock, "available", lambda: False)
    pool = WarmPool(max_sandboxes=1)
    argv = [python_runtime, "-c", REACH_THROUGH_PROC]
    how: dict[str, Any] = {"policy": pure_policy(), "limits": Limits(timeout_s=10), "profile": load_profile()}
    try:
        first = await pool.run(argv, stdin=b'"first"', **how)
        second = await pool.run(argv, stdin=b'"second"', **how)
    finally:
        await pool.aclose()
    assert first is not None and second is not None, pool.counters
    assert first.status is Status.OK and second.status is Status.OK, (first.message, second.message)
    assert first.output["others"], "the probe saw no other process: it proves nothing"
    assert first.output["left"] == [], first.output  # nowhere to leave a file beyond the call's own mounts
    assert second.output["seen"] == [], second.output
    # Neither SIGKILL nor SIGSTOP from a call ends or stops its host: it served the second call.
    assert pool.counters["started"] == 1 and pool.counters["reused"] == 1, pool.counters


async def test_an_engine_never_shares_a_warm_sandbox_between_peers() -> None:
    """A daemon that is not root runs every peer's sandboxes as its own user (``run_as``
    None); the peer is still part of the key, so each peer gets sandboxes of its own."""
    from noether_nix.engine.engine import Engine, RunOptions
    from noether_nix.model.signing import load_or_create_author_key, public_key_hex, sign_id
    from noether_nix.model.stage import stage_from_spec
    from noether_nix.paths import noether_home

    engine = Engine()
    stage = stage_from_spec({"name": "who", "input": "Any", "output": "Any", "effects": [],
                             "implementation": {"code": "def execute(x):\n    return x\n", "language": "python"}})
    key = load_or_create_author_key(noether_home())
    stage = msgspec.structs.replace(stage, ed25519_signature=sign_id(key, stage.id),
                                    signer_public_key=public_key_hex(key))
    engine.store.add(stage, activate=True)
    root = {"description": "test", "version": "1", "root": {"op": "Stage", "id": stage.id}}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.serve_warm)
        await trio.sleep(0.1)
        for peer in (5001, 5002, 5001):
            res = await engine.run(root, f"for {peer}", RunOptions(cache=False), requester_uid=peer)
            assert res.status == "ok" and res.output == f"for {peer}", res.error
        warm = engine.describe_warm()
        nursery.cancel_scope.cancel()
    assert warm is not None
    assert warm["counters"]["started"] == 2 and warm["counters"]["reused"] == 1, warm  # one per peer, reused by it
