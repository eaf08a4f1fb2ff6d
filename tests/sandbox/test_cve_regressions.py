"""Regression cases from sandbox CVEs (issue 13), one per class, each named
after its CVE. Where a class cannot happen here the test shows why, in a
way that would fail if it could."""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio

from noether_nix.engine.grants import check_grants
from noether_nix.engine.options import RunOptions
from noether_nix.errors import NoetherError
from noether_nix.model.effects import EffectSet, FsRead, FsWrite
from noether_nix.sandbox import landlock
from noether_nix.sandbox.bwrap import build_argv, open_bind_fds
from noether_nix.sandbox.policy import IsolationPolicy, Limits, policy_from_effects
from noether_nix.sandbox.profile import load_profile
from noether_nix.sandbox.supervisor import Isolation, Status, run_sandboxed
from tests.sandbox.conftest import Probe
from tests.sandbox_access import share_with_sandbox

J = "import json, os, sys\n"
EPERM, ENOSYS = errno.EPERM, errno.ENOSYS

# ---------------------------------------------------------------- terminals

TTY_PROBE = J + """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
c = ctypes.c_char(b"x")
def ioctl(fd, cmd):
    ctypes.set_errno(0)
    rc = libc.syscall(ctypes.c_long(16), ctypes.c_long(fd), ctypes.c_ulong(cmd), ctypes.byref(c))
    return "allowed" if rc != -1 else ctypes.get_errno()
out = {"std_ttys": [fd for fd in (0, 1, 2) if os.isatty(fd)]}
try:
    os.close(os.open("/dev/tty", os.O_RDWR)); out["dev_tty"] = "opened"
except OSError as e:
    out["dev_tty"] = e.errno
# The only terminal a sandbox can have is one it makes itself: make it its
# controlling terminal, where TIOCSTI would otherwise be allowed.
master, slave = os.openpty()
ctty = os.open(os.ttyname(slave), os.O_RDWR)
for cmd in CMDS:
    out[hex(cmd)] = [ioctl(fd, cmd) for fd in (0, 1, 2, ctty)]
print(json.dumps(out))
"""
TIOCSTI, TIOCLINUX = 0x5412, 0x541C


async def run_tty_probe(probe: Probe, cmds: list[int]) -> dict[str, Any]:
    r = await probe(TTY_PROBE.replace("CMDS", repr(cmds)))
    assert r.status is Status.OK, r
    assert r.output["std_ttys"] == [] and r.output["dev_tty"] == errno.ENXIO  # no controlling terminal of the host
    return r.output  # type: ignore[no-any-return]


async def test_cve_2017_5226_tiocsti_cannot_inject_input(probe: Probe) -> None:
    out = await run_tty_probe(probe, [TIOCSTI])
    assert out[hex(TIOCSTI)] == [EPERM] * 4, out


async def test_cve_2019_7303_tiocsti_with_high_bits_set_is_still_refused(probe: Probe) -> None:
    # The kernel keeps only the command's low 32 bits; a filter comparing all 64 lets these through.
    cmds = [TIOCSTI | (1 << 32), TIOCSTI | (0xFFFFFFFF << 32)]
    out = await run_tty_probe(probe, cmds)
    for cmd in cmds:
        assert out[hex(cmd)] == [EPERM] * 4, out


async def test_cve_2023_28100_tioclinux_is_refused(probe: Probe) -> None:
    cmds = [TIOCLINUX, TIOCLINUX | (1 << 32)]
    out = await run_tty_probe(probe, cmds)
    for cmd in cmds:
        assert out[hex(cmd)] == [EPERM] * 4, out


# ---------------------------------------------------------------- mounts and binds

async def test_cve_2019_12439_no_predictable_host_directory_is_used(probe: Probe, tmp_path: Path) -> None:
    # bwrap < 0.3.3 mounted on /tmp/.bubblewrap-$UID, which anyone could
    # plant first. Plant it for every uid a sandbox may run as: nothing uses it.
    victim = tmp_path / "victim"
    victim.mkdir()
    planted = []
    for uid in {os.geteuid(), *range(80000, 80064)}:
        p = Path(f"/tmp/.bubblewrap-{uid}")
        if not p.exists() and not p.is_symlink():
            p.symlink_to(victim)
            planted.append(p)
    try:
        r = await probe(J + "print(json.dumps(sorted(os.listdir('/tmp'))))")
        assert r.status is Status.OK and r.output == []
        assert list(victim.iterdir()) == []
        assert all(p.is_symlink() and os.readlink(p) == str(victim) for p in planted)
    finally:
        for p in planted:
            p.unlink()
    # Our own launch names no host directory but the binds the policy lists.
    profile = load_profile()
    policy = policy_from_effects(EffectSet.pure(), profile=profile)
    fds = open_bind_fds(policy, profile)
    try:
        argv = build_argv("/usr/bin/bwrap", ["/nix/store/x-prog/bin/prog"], policy=policy, limits=Limits(),
                          profile=profile, seccomp_fd=3, bind_fds=fds)
    finally:
        for fd in fds.values():
            os.close(fd)
    options = argv[1:argv.index("--")]
    assert not [a for a in options if a.startswith(("/tmp/", "/run/", "/var/", "/home/"))], options


async def test_cve_2024_42472_a_bind_swapped_for_a_symlink_after_the_check_is_refused(
        probe: Probe, shared_tmp: Path) -> None:
    profile = load_profile()
    # Writable: the checked directory is replaced by a symlink to somewhere else.
    out, victim = shared_tmp / "out", shared_tmp / "victim"
    out.mkdir()
    victim.mkdir()
    share_with_sandbox(out, writable=True)
    share_with_sandbox(victim, writable=True)
    policy = policy_from_effects(EffectSet.of([FsWrite(path=str(out))]), profile=profile)
    out.rename(shared_tmp / "out.old")
    out.symlink_to(victim)
    with pytest.raises(NoetherError) as refused:
        await probe(f"open({str(out / 'f')!r}, 'w').write('x')\nprint(1)", policy=policy)
    assert refused.value.code == "invalid_policy_path"
    assert list(victim.iterdir()) == []
    # Read-only: a link checked while it led somewhere harmless now leads to /.
    (shared_tmp / "data").mkdir()
    link = shared_tmp / "view"
    link.symlink_to(shared_tmp / "data")
    policy = policy_from_effects(EffectSet.of([FsRead(path=str(link))]), profile=profile)
    link.unlink()
    link.symlink_to("/")
    with pytest.raises(NoetherError) as refused:
        await probe(J + f"print(json.dumps(os.path.exists({str(link / 'etc' / 'shadow')!r})))", policy=policy)
    assert refused.value.code == "invalid_policy_path" and "whole host" in refused.value.message


async def test_cve_2024_32462_program_text_never_becomes_bwrap_options(python_runtime: str) -> None:
    profile = load_profile()
    policy = policy_from_effects(EffectSet.pure(), profile=profile)
    # A program "named" like an option is a program bwrap cannot find, not an option.
    r = await run_sandboxed(["--ro-bind", "/", "/host", python_runtime, "-c", "print(1)"], policy=policy,
                            limits=Limits(timeout_s=5), stdin=b"", isolation=Isolation("bwrap"), profile=profile)
    assert r.status is Status.SPAWN_FAILED and "--ro-bind" in r.message, r
    # Arguments that look like options reach the program unchanged.
    args = ["--bind", "/", "/", "--setenv", "LD_PRELOAD", "x", "--"]
    r = await run_sandboxed([python_runtime, "-c", "import json, sys\nprint(json.dumps(sys.argv[1:]))", *args],
                            policy=policy, limits=Limits(timeout_s=5), stdin=b"", isolation=Isolation("bwrap"),
                            profile=profile)
    assert r.status is Status.OK and r.output == args, r
    argv = build_argv("bwrap", ["--bind", "/", "/"], policy=policy, limits=Limits(), profile=profile,
                      seccomp_fd=None, bind_fds=None)
    assert argv[argv.index("--") + 1:] == ["--bind", "/", "/"]


@pytest.mark.parametrize(("target", "option"), [("/", "allow_read"), ("/proc", "allow_read"),
                                                 ("/sys", "allow_read"), ("/nix/store", "allow_write"),
                                                 ("/", "allow_write")])
def test_cve_2022_21682_a_grant_cannot_reopen_what_a_deny_closes(tmp_path: Path, target: str, option: str) -> None:
    # "/", /proc, /sys, /dev are never bound and /nix never writable. A grant
    # naming them another way (a symlink, a parent) is the same grant.
    link = tmp_path / "innocent-looking"
    link.symlink_to(target)
    with pytest.raises(NoetherError) as refused:
        check_grants(RunOptions(**{option: [str(link)]}))
    assert refused.value.code == "invalid_grant"
    effect = FsWrite(path=str(link)) if option == "allow_write" else FsRead(path=str(link))
    with pytest.raises(NoetherError):
        policy_from_effects(EffectSet.of([effect]), profile=load_profile())
    with pytest.raises(NoetherError):  # the only parent of them all
        check_grants(RunOptions(**{option: ["/"]}))


# ---------------------------------------------------------------- syscalls

# Syscalls newer than the filter's review (numbers shared by every
# architecture since Linux 5.1), called with null arguments.
NEWER = {"statmount": 457, "listmount": 458, "lsm_get_self_attr": 459, "lsm_list_modules": 461, "mseal": 462}


def host_has(nr: int) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    ctypes.set_errno(0)
    rc = libc.syscall(ctypes.c_long(nr), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0))
    return not (rc == -1 and ctypes.get_errno() == ENOSYS)


async def test_cve_2021_41133_syscalls_newer_than_the_filter_are_not_available(probe: Probe) -> None:
    present = {name: nr for name, nr in NEWER.items() if host_has(nr)}
    code = J + f"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *args):
    ctypes.set_errno(0)
    rc = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    if rc == 0 and nr == 56:
        os._exit(0)  # a clone child, should there be one
    return "ok" if rc != -1 else ctypes.get_errno()
out = {{name: call(nr, 0, 0, 0, 0) for name, nr in {present!r}.items()}}
out["clone3"] = call(435, 0, 0)
out["clone_newuser"] = call(56, 0x10000000 | 17, 0, 0, 0, 0)
out["clone_newns"] = call(56, 0x00020000 | 17, 0, 0, 0, 0)
out["far_beyond"] = call(1000)
print(json.dumps(out))"""
    r = await probe(code)
    assert r.status is Status.OK, r
    for name in present:
        assert r.output[name] == ENOSYS, (name, r.output)
    # clone3 hides its flags in a struct: "not implemented", so libc uses clone, whose flags are checked.
    assert r.output["clone3"] == ENOSYS
    assert r.output["clone_newuser"] == EPERM and r.output["clone_newns"] == EPERM
    assert r.output["far_beyond"] == ENOSYS
    # ... and libc's fallback keeps threads and fork working.
    ok = await probe(J + "import threading\nt = threading.Thread(target=lambda: None)\nt.start()\nt.join()\n"
                     "pid = os.fork()\nif pid == 0:\n    os._exit(7)\n"
                     "print(json.dumps(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])))")
    assert ok.output == 7, ok


# ---------------------------------------------------------------- abstract sockets between Network sandboxes

LISTEN = J + """
import socket
try:
    s = socket.socket(socket.AF_UNIX)
    s.bind(NAME); s.listen(1); s.settimeout(4)
    try:
        s.accept(); out = "accepted"
    except socket.timeout:
        out = "nobody came"
except OSError as e:
    out = e.errno
print(json.dumps(out))"""
CONNECT = J + """
import socket, time
deadline = time.monotonic() + 3
while True:
    try:
        s = socket.socket(socket.AF_UNIX)
    except OSError as e:
        out = e.errno; break
    try:
        s.connect(NAME); out = "connected"; break
    except (ConnectionRefusedError, FileNotFoundError):
        if time.monotonic() > deadline:
            out = "never listening"; break
        time.sleep(0.05)
    except OSError as e:
        out = e.errno; break
a, b = socket.socketpair()  # the sandbox's own unix sockets still work
a.sendall(b"x")
print(json.dumps([out, b.recv(1).decode()]))"""


async def two_network_sandboxes(probe: Probe) -> tuple[Any, Any]:
    name = repr(f"\0noether-cve-2024-27297-{uuid.uuid4().hex}")
    results: dict[str, Any] = {}

    async def one(tag: str, code: str) -> None:
        r = await probe(code.replace("NAME", name), effects=["Network"], limits=Limits(timeout_s=15))
        assert r.status is Status.OK, r
        results[tag] = r.output

    async with trio.open_nursery() as n:
        n.start_soon(one, "listener", LISTEN)
        await trio.sleep(0.5)
        n.start_soon(one, "connector", CONNECT)
    return results["listener"], results["connector"]


async def test_cve_2024_27297_network_sandboxes_cannot_reach_each_others_abstract_sockets(probe: Probe) -> None:
    if not landlock.available():
        pytest.skip("no Landlock scoping on this kernel: the next test covers the fallback")
    listener, connector = await two_network_sandboxes(probe)
    assert listener == "nobody came"
    assert connector == [EPERM, "x"]  # the socket existed (else ECONNREFUSED) and was out of reach


async def test_cve_2024_27297_without_landlock_network_sandboxes_get_no_unix_sockets(
        probe: Probe, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(landlock, "available", lambda: False)
    monkeypatch.setattr(landlock, "restrictor", lambda: None)
    listener, connector = await two_network_sandboxes(probe)
    assert listener == EPERM and connector == [EPERM, "x"]


async def test_cve_2024_27297_a_network_sandbox_cannot_reach_the_hosts_abstract_sockets(probe: Probe) -> None:
    name = f"\0noether-host-{uuid.uuid4().hex}"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(name)
    srv.listen(1)
    try:
        r = await probe(CONNECT.replace("NAME", repr(name)), effects=["Network"])
        assert r.status is Status.OK and r.output[0] in (EPERM,), r.output
    finally:
        srv.close()


# ---------------------------------------------------------------- what a run leaves on the host

PLANT = J + """
import shutil
for old in (OUT + "/victim-link", OUT + "/sub"):  # a warm probe runs twice: start from the same state
    if os.path.islink(old):
        os.unlink(old)
    elif os.path.isdir(old):
        shutil.rmtree(old)
os.symlink(VICTIM, "/work/victim-link")
os.symlink(VICTIM, "/tmp/victim-link")
os.symlink(VICTIM, OUT + "/victim-link")
os.mkdir(OUT + "/sub")
os.symlink(VICTIM + "/precious.txt", OUT + "/sub/precious-link")
if MODE == "fail":
    sys.exit(1)
import time
time.sleep(30)"""


@pytest.mark.parametrize("mode", ["fail", "timeout"])
async def test_cve_2025_46415_clean_up_never_follows_a_planted_symlink(probe: Probe, shared_tmp: Path,
                                                                        mode: str) -> None:
    # Nothing host-side deletes what a sandbox could write (/work and /tmp
    # are the sandbox's own tmpfs; writable binds are the caller's to keep);
    # whatever is cleaned up (cgroups, fds, the uid lease) is not reachable
    # from inside. A planted link to host data must leave that data alone.
    victim, out = shared_tmp / "victim", shared_tmp / "out"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    out.mkdir()
    share_with_sandbox(out, writable=True)
    code = PLANT.replace("VICTIM", repr(str(victim))).replace("OUT", repr(str(out))).replace("MODE", repr(mode))
    r = await probe(code, effects=[{"effect": "FsWrite", "path": str(out)}], limits=Limits(timeout_s=1.5))
    assert r.status is (Status.ERROR if mode == "fail" else Status.TIMED_OUT), r
    assert (victim / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in victim.iterdir()) == ["precious.txt"]
    assert (out / "victim-link").is_symlink() and (out / "sub" / "precious-link").is_symlink()


async def test_cve_2025_52992_a_failed_run_leaves_nothing_others_may_write(probe: Probe, shared_tmp: Path) -> None:
    # Whatever umask started us, what a sandbox creates is private to its host user (and, for a
    # dedicated sandbox user, its group), never world-writable or -readable; nor setuid.
    out = shared_tmp / "out"
    out.mkdir()
    share_with_sandbox(out, writable=True)
    code = J + f"""
open({str(out / 'file')!r}, "w").write("x")
os.makedirs({str(out / 'dir')!r}, exist_ok=True)  # a warm probe runs twice
os.close(os.open({str(out / 'dir' / 'inner')!r}, os.O_CREAT | os.O_WRONLY, 0o777))
sys.exit(3)"""
    old = os.umask(0)
    try:
        r = await probe(code, effects=[{"effect": "FsWrite", "path": str(out)}])
    finally:
        os.umask(old)
    assert r.status is Status.ERROR and r.exit_code == 3, r
    for p in (out / "file", out / "dir", out / "dir" / "inner"):
        mode = p.stat().st_mode
        assert mode & 0o007 == 0, (p, oct(mode))
        assert mode & 0o6000 == 0, (p, oct(mode))


def test_policy_is_plain_data() -> None:
    # The CVE tests above build policies like this one; keep it honest.
    assert IsolationPolicy(ro_binds=[], network=False, env_allowlist=[]).rw_binds == []
