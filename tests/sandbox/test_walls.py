"""The sandbox's own file system and limits (issue 13, findings 5, 11, 13).

- Fail closed without a memory and process-count mechanism; the operator
  may opt in; doctor says which limits are active.
- ``/``, ``/dev`` and ``/proc`` are read-only once mounted, ``/dev/shm`` is
  size-capped like ``/tmp`` and ``/work``; the store view is read-only.
- Read-only binds are resolved once and bound by fd, never by name.
- The host name is fixed.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from noether_nix.errors import NoetherError
from noether_nix.model.effects import EffectSet
from noether_nix.sandbox.bwrap import build_argv, open_bind_fds
from noether_nix.sandbox.policy import Bind, IsolationPolicy, Limits, policy_from_effects, validate
from noether_nix.sandbox.profile import load_profile
from noether_nix.sandbox.supervisor import Status
from tests.sandbox.conftest import Probe

J = "import json, os, sys\n"


async def test_without_a_cgroup_a_sandboxed_run_is_refused(probe: Probe, tmp_path: Path) -> None:
    empty = tmp_path / "no-cgroupfs"  # where cgroupfs is not mounted: no mechanism at all
    empty.mkdir()
    with pytest.raises(NoetherError) as refused:
        await probe("print(1)", cgroup_root=empty)
    assert refused.value.code == "limits_unavailable"
    assert "memory" in refused.value.message and "allow_without_limits" in (refused.value.hint or "")


async def test_the_operator_can_opt_in_to_runs_without_a_cgroup(probe: Probe, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOETHER_SANDBOX_WITHOUT_LIMITS", "1")
    r = await probe("print(7)", cgroup_root=tmp_path)
    assert r.status is Status.OK and r.output == 7
    monkeypatch.delenv("NOETHER_SANDBOX_WITHOUT_LIMITS")
    allowed = msgspec.structs.replace(load_profile(), allow_without_limits=True)
    assert (await probe("print(8)", cgroup_root=tmp_path, profile=allowed)).output == 8


def test_doctor_says_which_limits_are_active() -> None:
    from noether_nix.service.doctor import describe_sandbox

    report = describe_sandbox()
    limits = report["limits"]
    assert {"memory", "pids", "when_missing"} <= set(limits)
    if limits["cgroup"] is not None:
        assert limits["memory"] and limits["pids"]
    assert limits["when_missing"] in ("refused", "allowed by the operator")
    users = report["sandbox_users"]
    assert users["range"] == "noether-sbx-0…63 (uids 80000–80063, group noether-sbx)"
    if os.geteuid() == 0:
        assert users["present"] is True and users["used_by_this_process"] is True


async def test_root_dev_and_proc_are_read_only_and_every_tmpfs_is_capped(probe: Probe) -> None:
    code = J + """
out = {}
for p in ("/evil", "/nix/evil", "/dev/evil", "/proc/sys/kernel/hostname"):
    try:
        open(p, "w").write("x"); out[p] = "written"
    except OSError as e:
        out[p] = e.errno
for d in ("/tmp", "/work", "/dev/shm"):
    n = 0
    try:
        with open(d + "/fill", "wb") as f:
            while n < 64:
                f.write(b"x" * 1048576); f.flush(); n += 1
    except OSError as e:
        out[d] = [n, e.errno]
    else:
        out[d] = [n, None]
    os.unlink(d + "/fill")
open("/dev/null", "w").write("still works")
print(json.dumps(out))"""
    r = await probe(code, limits=Limits(timeout_s=20, tmpfs_size_bytes=4 * 1024 * 1024))
    assert r.status is Status.OK, r
    for p in ("/evil", "/nix/evil", "/dev/evil", "/proc/sys/kernel/hostname"):
        assert r.output[p] in (13, 30), (p, r.output)  # EACCES / EROFS
    for d in ("/tmp", "/work", "/dev/shm"):
        assert r.output[d][0] <= 4 and r.output[d][1] == 28, (d, r.output)  # ENOSPC past the cap


async def test_the_store_view_of_a_closure_is_read_only(probe: Probe, python_runtime: str) -> None:
    from noether_nix.nix.programs import store_closure

    store_path = "/".join(python_runtime.split("/")[:4])
    profile = load_profile()
    policy = policy_from_effects(EffectSet.pure(), profile=profile, store_paths=store_closure(store_path))
    code = J + """
out = {}
for p in ("/nix/store/planted", "/nix/planted"):
    try:
        os.mkdir(p); out[p] = "made"
    except OSError as e:
        out[p] = e.errno
print(json.dumps(out))"""
    r = await probe(code, policy=policy)
    assert r.output == {"/nix/store/planted": 30, "/nix/planted": 30}, r  # EROFS


async def test_the_host_name_is_fixed(probe: Probe) -> None:
    r = await probe(J + "import socket\nprint(json.dumps([socket.gethostname(), os.uname().nodename]))")
    assert r.output == ["noether", "noether"]  # never the host's


def test_read_only_binds_are_resolved_once_and_bound_by_fd(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "data")
    policy = validate(IsolationPolicy(ro_binds=[Bind(str(tmp_path / "alias"), "/data")], network=False,
                                      env_allowlist=[]))
    fds = open_bind_fds(policy)
    try:
        assert os.path.samestat(os.fstat(fds[("ro", 0)]), os.stat(tmp_path / "data"))
        argv = build_argv("bwrap", ["true"], policy=policy, limits=Limits(), profile=load_profile(),
                          seccomp_fd=None, bind_fds=fds)
        i = argv.index("--ro-bind-fd")
        assert argv[i + 1:i + 3] == [str(fds[("ro", 0)]), "/data"]
        assert str(tmp_path / "alias") not in argv and str(tmp_path / "data") not in argv
    finally:
        for fd in fds.values():
            os.close(fd)


@pytest.mark.parametrize("target", ["/", "/proc", "/proc/self", "/sys/kernel", "/dev"])
def test_a_read_only_bind_leading_to_a_refused_path_is_refused(tmp_path: Path, target: str) -> None:
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(NoetherError) as refused:
        validate(IsolationPolicy(ro_binds=[Bind(str(tmp_path / "link"), "/x")], network=False, env_allowlist=[]))
    assert refused.value.code == "invalid_policy_path" and "leads to" in refused.value.message


def test_a_store_path_that_leads_out_of_the_store_is_refused(tmp_path: Path) -> None:
    # Store paths are bound from a closure; one that is a symlink must stay in the store.
    import subprocess

    from noether_nix.nix.build import nix_tool

    (tmp_path / "escape").symlink_to("/etc")
    added = subprocess.run([nix_tool("nix-store"), "--add", str(tmp_path / "escape")], capture_output=True,
                           text=True, timeout=60)
    if added.returncode != 0:
        pytest.skip(f"cannot add to the Nix store here: {added.stderr.strip()}")
    link = added.stdout.strip()
    assert os.path.islink(link)
    with pytest.raises(NoetherError) as refused:
        validate(IsolationPolicy(ro_binds=[Bind(link, link)], network=False, env_allowlist=[]))
    assert "leads out of the store" in refused.value.message
