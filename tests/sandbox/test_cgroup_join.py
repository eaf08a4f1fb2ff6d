"""How a sandbox start joins its run's cgroup (``RunCgroup.joiner``).

A forked child moves itself in between fork and exec: on cgroup v1 through
each hierarchy's ``tasks`` file (one thread: the child has only one, and the
kernel then skips a global lock whose first writer after a quiet spell waits
for an RCU grace period), else through ``cgroup.procs``. Either way the whole
child, and so everything it starts, is in every hierarchy of the run's cgroup.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from noether_nix.model.effects import EffectSet
from noether_nix.sandbox.blocking import run_blocking
from noether_nix.sandbox.cgroups import RunCgroup, _own_paths
from noether_nix.sandbox.policy import Limits, policy_from_effects
from noether_nix.sandbox.profile import load_profile
from noether_nix.sandbox.supervisor import Isolation, Status, run_sandboxed


def _fork_and_join(cg: RunCgroup, then: str = "") -> int:
    """A child that joins ``cg``; it reports over a pipe, then waits to be reaped. Its pid."""
    join = cg.joiner()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            join()
            os.write(w, b"joined")
        except BaseException as e:
            os.write(w, repr(e).encode())
        finally:
            os._exit(0)
    os.close(w)
    said = os.read(r, 200)
    os.close(r)
    os.waitpid(pid, 0)
    assert said == b"joined", said
    return pid


def test_a_forked_child_joins_every_hierarchy_of_a_real_run_cgroup() -> None:
    cg = RunCgroup.create(64 * 1024 * 1024, 64)
    if cg is None:
        pytest.skip("no cgroup can be created here")
    try:
        join = cg.joiner()
        r, w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child: join, say so, wait until told to go
            os.close(r)
            os.close(go_w)
            join()
            grandchild = os.fork()
            if grandchild == 0:
                os.read(go_r, 1)
                os._exit(0)
            os.write(w, str(grandchild).encode())
            os.read(go_r, 1)
            os.waitpid(grandchild, 0)
            os._exit(0)
        os.close(w)
        os.close(go_r)
        grandchild = int(os.read(r, 32))
        os.close(r)
        try:
            for d in cg.dirs.values():  # the child and what it started, in each hierarchy, as processes
                members = {int(x) for x in (d / "cgroup.procs").read_text().split()}
                assert {pid, grandchild} <= members, (d, members)
            assert cg.pids() == sorted({pid, grandchild})
        finally:
            os.close(go_w)
            os.waitpid(pid, 0)
    finally:
        cg.kill()
        cg.remove()


def _fake(tmp_path: Path, version: int, with_tasks: bool) -> RunCgroup:
    dirs = {}
    for ctl in (("memory", "pids") if version == 1 else ("",)):
        d = tmp_path / (ctl or "unified")
        d.mkdir()
        (d / "cgroup.procs").write_text("")
        if with_tasks:
            (d / "tasks").write_text("")
        dirs[ctl] = d
    return RunCgroup(dirs, version)


def test_v1_joins_through_tasks_with_the_calling_thread(tmp_path: Path) -> None:
    cg = _fake(tmp_path, 1, with_tasks=True)
    _fork_and_join(cg)
    for d in cg.dirs.values():
        assert (d / "tasks").read_text() == "0"  # "0": the thread that writes
        assert (d / "cgroup.procs").read_text() == ""


def test_v1_without_a_usable_tasks_file_joins_through_cgroup_procs(tmp_path: Path) -> None:
    cg = _fake(tmp_path, 1, with_tasks=False)
    pid = _fork_and_join(cg)
    for d in cg.dirs.values():
        assert (d / "cgroup.procs").read_text() == str(pid)
        assert not (d / "tasks").exists()  # never created: a cgroup file is written, not made


def test_v2_joins_through_cgroup_procs(tmp_path: Path) -> None:
    cg = _fake(tmp_path, 2, with_tasks=True)
    pid = _fork_and_join(cg)
    d = cg.dirs[""]
    assert (d / "cgroup.procs").read_text() == str(pid)
    assert (d / "tasks").read_text() == ""


def test_a_join_that_cannot_happen_fails_the_start(tmp_path: Path) -> None:
    cg = _fake(tmp_path, 1, with_tasks=False)
    for d in cg.dirs.values():
        (d / "cgroup.procs").unlink()
    join = cg.joiner()
    with pytest.raises(FileNotFoundError):
        join()


def test_a_joiner_called_with_threads_moves_every_thread() -> None:
    """``tasks`` moves one thread: a caller with several joins as a whole process instead."""
    cg = RunCgroup.create(64 * 1024 * 1024, 64)
    if cg is None or cg.version != 1:
        pytest.skip("needs a cgroup v1 run cgroup")
    join = cg.joiner()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - a child that has threads before it joins
        stop = threading.Event()
        for _ in range(3):
            threading.Thread(target=stop.wait, daemon=True).start()
        join()
        os.write(w, b"j")
        time.sleep(30)
        os._exit(0)
    os.close(w)
    try:
        assert os.read(r, 1) == b"j"
        tids = {int(t) for t in os.listdir(f"/proc/{pid}/task")}
        assert len(tids) == 4
        for d in cg.dirs.values():
            assert tids <= {int(x) for x in (d / "tasks").read_text().split()}, d
    finally:
        os.close(r)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        cg.kill()
        cg.remove()


async def test_a_start_that_cannot_join_its_cgroup_is_refused_not_run(python_runtime: str, tmp_path: Path) -> None:
    """Plain directories where cgroupfs should be: the run's cgroup files do not exist, so the
    start fails (no file is made, nothing runs unbounded)."""
    own = _own_paths()
    if "memory" not in own or "pids" not in own:
        pytest.skip("no cgroup v1 memory and pids hierarchies here")
    for ctl in ("memory", "pids", "cpuacct"):
        (tmp_path / ctl / own.get(ctl, "/").lstrip("/")).mkdir(parents=True, exist_ok=True)
    profile = load_profile()
    how = {"policy": policy_from_effects(EffectSet.pure(), profile=profile), "limits": Limits(timeout_s=5),
           "stdin": b"null", "isolation": Isolation("bwrap"), "profile": profile, "cgroup_root": tmp_path}
    argv = [python_runtime, "-c", "print(1)"]
    for r in (await run_sandboxed(argv, **how), run_blocking(argv, **how)):  # on trio, and without a loop
        assert r.status is Status.SPAWN_FAILED and r.output is None, r
        assert "preparing its process failed (joining the run's cgroup" in r.message, r.message
    assert not [*tmp_path.rglob("cgroup.procs"), *tmp_path.rglob("tasks")]


def test_a_uid_whose_sandbox_was_not_seen_gone_is_withheld() -> None:
    """A drain that ran out (processes of the sandbox may be left): its dedicated uid is not given
    back to the pool, so no later sandbox shares a uid with them."""
    from noether_nix.sandbox import launch as launch_module
    from noether_nix.sandbox.launch import Launch

    released: list[int] = []

    class Lease:
        uid = 80042

        def release(self) -> None:
            released.append(self.uid)

    for uid_free in (True, False):
        launch = Launch(["/bin/true"], {}, [], None, None, Lease(), "bwrap")  # type: ignore[arg-type]
        launch.finish(uid_free=uid_free)
        launch.finish()  # twice: nothing more happens
    assert released == [80042]
    assert any(getattr(w, "uid", None) == 80042 for w in launch_module._WITHHELD)
    launch_module._WITHHELD.clear()
