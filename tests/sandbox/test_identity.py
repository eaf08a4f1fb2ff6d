"""No sandbox is ever host root (issue 13, finding 1).

A sandbox that root starts (``noether run`` / ``stage test`` as root, a root
daemon serving root) runs as a dedicated noether-sbx user from a leased
range, one per concurrent sandbox; without those users it is refused.
"""

from __future__ import annotations

import os
import pwd
import uuid
from pathlib import Path

import msgspec
import pytest
import trio

from noether_nix.engine.engine import Engine, RunOptions
from noether_nix.errors import NoetherError
from noether_nix.sandbox import identity
from noether_nix.sandbox.identity import SandboxUids
from noether_nix.sandbox.policy import Limits
from noether_nix.sandbox.profile import load_profile
from noether_nix.sandbox.supervisor import Status
from tests.sandbox.conftest import Probe, while_running
from tests.sandbox_access import share_with_sandbox

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="only sandboxes started by root use the sandbox users")
RANGE = range(80000, 80064)
J = "import json, os, sys\n"


def host_uids(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError("no Uid line")


@root_only
async def test_a_sandbox_root_starts_is_a_dedicated_unprivileged_user_on_the_host(probe: Probe) -> None:
    seen: dict[str, list[int]] = {}

    async def one(tag: str) -> None:
        marker = f"noether-uid-{tag}-{uuid.uuid4().hex}"

        async def watch() -> None:
            procs = await while_running(marker)
            seen[tag] = sorted({u for p in procs for u in host_uids(p.pid)})

        async with trio.open_nursery() as n:
            n.start_soon(watch)
            r = await probe("import time\ntime.sleep(1.5)\nprint(1)", marker=marker)
            assert r.status is Status.OK, r
    async with trio.open_nursery() as n:  # two at once: each holds a uid of its own
        n.start_soon(one, "a")
        n.start_soon(one, "b")
    for uids in seen.values():
        assert len(uids) == 1 and uids[0] != 0 and uids[0] in RANGE, seen
        assert pwd.getpwuid(uids[0]).pw_name.startswith("noether-sbx-")
    assert seen["a"] != seen["b"], "concurrent sandboxes shared a host uid"


@root_only
async def test_a_root_started_sandbox_cannot_write_any_sysctl(probe: Probe) -> None:
    # kernel.core_pattern alone would be code as root at the next core dump.
    # Only opened for writing, never written: harmless even where it succeeds.
    code = J + """
opened, refused = [], 0
for top in ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs"):
    paths = [top] if os.path.isfile(top) else [os.path.join(d, f) for d, _, fs in os.walk(top) for f in fs]
    for p in paths:
        try:
            os.close(os.open(p, os.O_WRONLY)); opened.append(p)
        except OSError:
            refused += 1
print(json.dumps([opened, refused]))"""
    r = await probe(code, limits=Limits(timeout_s=20))
    opened, refused = r.output
    assert opened == [], opened[:20]
    assert refused > 100  # it did see the sysctls


@root_only
async def test_without_the_sandbox_users_a_root_run_is_refused_not_run_as_root(probe: Probe, tmp_path: Path) -> None:
    base = 79000
    assert not any(_exists(u) for u in range(base, base + 2)), "the test needs a uid range without users"
    profile = msgspec.structs.replace(load_profile(), sandbox_uids=SandboxUids(base=base, count=2,
                                                                                lock_dir=str(tmp_path / "locks")))
    with pytest.raises(NoetherError) as refused:
        await probe("print(1)", profile=profile)
    assert refused.value.code == "sandbox_users_missing"
    assert "noether-sbx-" in refused.value.message and "./dev setup" in (refused.value.hint or "")


def _exists(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


@root_only
def test_each_uid_is_leased_to_one_sandbox_at_a_time(tmp_path: Path) -> None:
    config = SandboxUids(base=80000, count=2, lock_dir=str(tmp_path / "locks"))
    a, b = identity.acquire(config), identity.acquire(config)
    try:
        assert {a.uid, b.uid} == {80000, 80001}
        with pytest.raises(NoetherError) as busy:
            identity.acquire(config)
        assert busy.value.code == "sandbox_users_busy"
        a.release()
        c = identity.acquire(config)
        assert c.uid == a.uid
        c.release()
    finally:
        a.release()
        b.release()
    assert os.stat(tmp_path / "locks").st_mode & 0o777 == 0o700


@root_only
def test_a_lock_directory_anyone_else_controls_is_refused(tmp_path: Path) -> None:
    planted = tmp_path / "planted"
    planted.mkdir(mode=0o777)
    planted.chmod(0o777)
    (tmp_path / "link").symlink_to(tmp_path / "private")
    (tmp_path / "private").mkdir(mode=0o700)
    for lock_dir in (planted, tmp_path / "link"):
        with pytest.raises(NoetherError) as refused:
            identity.acquire(SandboxUids(base=80000, count=2, lock_dir=str(lock_dir)))
        assert refused.value.code == "sandbox_uids_unavailable"


@root_only
async def test_without_a_cgroup_the_dedicated_uid_still_caps_processes(probe: Probe, tmp_path: Path) -> None:
    # RLIMIT_NPROC counts the host uid's processes: a real cap only because
    # the uid belongs to this one sandbox.
    profile = msgspec.structs.replace(load_profile(), allow_without_limits=True)
    code = J + """
import time
n = 0
try:
    for _ in range(200):
        if os.fork() == 0:
            time.sleep(3); os._exit(0)
        n += 1
except OSError as e:
    print(json.dumps([n, e.errno])); sys.stdout.flush(); os._exit(0)
print(json.dumps([n, None]))"""
    r = await probe(code, profile=profile, cgroup_root=tmp_path, limits=Limits(timeout_s=10, max_pids=24))
    assert r.status is Status.OK, r
    forked, err = r.output
    assert err == 11 and forked < 24  # EAGAIN: bwrap's two processes and the probe count too


@root_only
async def test_a_root_run_refuses_before_running_a_grant_its_sandbox_user_cannot_use(shared_tmp: Path) -> None:
    engine = Engine()
    out = shared_tmp / "out"
    out.mkdir(mode=0o755)  # root's, not writable by the sandbox users
    graph = {"description": "w", "version": "1", "root": {"op": "Stage", "id": "write_file"}}
    value = {"path": str(out / "f.txt"), "content": "x"}
    with pytest.raises(NoetherError) as refused:
        await engine.run(graph, value, RunOptions(allow_write=[str(out)]))
    assert refused.value.code == "invalid_grant" and "noether-sbx" in refused.value.message
    assert f"chgrp noether-sbx {out}" in (refused.value.hint or "")
    assert not (out / "f.txt").exists()
    share_with_sandbox(out, writable=True)  # what the hint says
    done = await engine.run(graph, value, RunOptions(allow_write=[str(out)]))
    assert done.status == "ok", done.error
    assert (out / "f.txt").read_text() == "x"
    assert (out / "f.txt").stat().st_uid in RANGE


def test_the_sysusers_snippet_declares_exactly_the_profiles_range() -> None:
    # systemd/noether.sysusers.conf (and ./dev setup, which reads it) must create what the profile names.
    lines = (Path(__file__).resolve().parents[2] / "systemd" / "noether.sysusers.conf").read_text().splitlines()
    config = load_profile().sandbox_uids
    groups = [ln.split() for ln in lines if ln.startswith("g noether-sbx ")]
    users = [ln.split()[1:3] for ln in lines if ln.startswith("u noether-sbx-")]
    assert groups == [["g", "noether-sbx", str(config.base)]]
    assert users == [[f"noether-sbx-{i}", f"{config.base + i}:noether-sbx"] for i in range(config.count)]
    if os.geteuid() == 0:
        gid, uids = identity.check_range(config)  # ./dev setup made them
        assert uids == list(range(config.base, config.base + config.count)) and gid == config.base
