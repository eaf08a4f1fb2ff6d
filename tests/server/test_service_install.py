"""`noether service install` / `uninstall` into a scratch root, the daemon's start-up refusal, and the
v2 delegation leaf. The whole thing on a booted systemd: tests/system/test_service_boot.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import msgspec
import pytest

from noether_nix.server import install
from noether_nix.server.install import InstallOptions, apply_install, default_config, uninstall
from noether_nix.server.preflight import EXIT_HOST_UNUSABLE, check_nix_store
from noether_nix.settings import Settings, build, strip_comments

ROOT = Path(__file__).resolve().parents[2]
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def test_default_config_documents_every_key_and_loads_as_the_defaults() -> None:
    text = default_config()
    doc = json.loads(text)
    def documented(value: msgspec.Struct, section: dict[str, object]) -> None:
        for key in msgspec.structs.fields(type(value)):
            assert key.name in section and len(str(section[f"//{key.name}"])) > 10, key.name
            if isinstance(key.default, msgspec.Struct) or key.default_factory not in (msgspec.NODEFAULT, list):
                documented(getattr(value, key.name), section[key.name])  # type: ignore[arg-type]

    documented(Settings(), doc)
    # as `noether daemon --config` reads it (comments dropped, no environment)
    loaded = build(strip_comments(doc), environ={})
    assert loaded == Settings(allowed_groups=["noether-users"])
    # The NixOS module lays its settings over the same file.
    assert (ROOT / "systemd" / "daemon.json").read_text() == text


def installed(tmp_path: Path, **kw: str) -> dict[str, object]:
    opts = InstallOptions(root=str(tmp_path), noether="/opt/noether-nix/bin/noether", **kw)
    return apply_install(opts, run=lambda cmd: pytest.fail(f"ran {cmd} for a scratch root"))


def test_install_writes_the_host_files_and_uninstall_removes_exactly_them(tmp_path: Path) -> None:
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    (tmp_path / "etc/systemd/system/other.service").write_text("[Service]\nExecStart=/bin/true\n")
    out = installed(tmp_path)
    service = (tmp_path / "etc/systemd/system/noether.service").read_text()
    assert "ExecStart=/opt/noether-nix/bin/noether daemon --config /etc/noether/daemon.json" in service
    assert "/usr/bin/env" not in service
    # The store is root's: builds go through nix-daemon, whose socket nix-users may reach.
    assert "Environment=NIX_REMOTE=daemon\nSupplementaryGroups=nix-users\n" in service
    assert "ExecStartPre=+/opt/noether-nix/bin/noether service delegate --user noether" in service
    assert "SocketGroup=noether-users" in (tmp_path / "etc/systemd/system/noether.socket").read_text()
    assert "g noether-users -" in (tmp_path / "etc/sysusers.d/noether.conf").read_text()
    assert "ExecStart=/opt/noether-nix/bin/noether run" in \
        (tmp_path / "etc/systemd/system/noether-run@.service").read_text()
    assert json.loads((tmp_path / "etc/noether/daemon.json").read_text())["allowed_groups"] == ["noether-users"]
    assert "/etc/noether/daemon.json" in out["installed"]  # type: ignore[operator]

    (tmp_path / "etc/noether/graphs").mkdir()
    (tmp_path / "etc/noether/graphs/mine.json").write_text("{}")  # the operator's, never install's
    gone = uninstall(str(tmp_path), run=lambda cmd: pytest.fail(f"ran {cmd}"))
    assert not (tmp_path / "etc/systemd/system/noether.service").exists()
    assert not (tmp_path / "etc/sysusers.d").exists()  # created by install, empty again
    assert not (tmp_path / "etc/noether/daemon.json").exists()
    assert not (tmp_path / install.MANIFEST).exists()
    assert (tmp_path / "etc/systemd/system/other.service").exists()
    assert (tmp_path / "etc/noether/graphs/mine.json").exists()
    assert len(gone["removed"]) == 7  # 4 units, 2 snippets, daemon.json: nothing else
    with pytest.raises(Exception, match="not installed"):
        uninstall(str(tmp_path), run=lambda cmd: None)


def test_an_existing_or_edited_config_is_the_operators(tmp_path: Path) -> None:
    (tmp_path / "etc/noether").mkdir(parents=True)
    (tmp_path / "etc/noether/daemon.json").write_text('{"max_runs": 2}\n')
    out = installed(tmp_path)
    assert out["kept"] == ["/etc/noether/daemon.json"]
    assert (tmp_path / "etc/noether/daemon.json").read_text() == '{"max_runs": 2}\n'
    uninstall(str(tmp_path), run=lambda cmd: None)
    assert (tmp_path / "etc/noether/daemon.json").exists() and (tmp_path / "etc/noether").is_dir()

    other = tmp_path / "second"
    other.mkdir()
    installed(other)
    (other / "etc/noether/daemon.json").write_text('{"max_runs": 3}\n')  # edited after install
    out = uninstall(str(other), run=lambda cmd: None)
    assert "/etc/noether/daemon.json (changed since install)" in out["kept"]
    assert (other / "etc/noether/daemon.json").read_text() == '{"max_runs": 3}\n'


def test_a_root_service_owns_the_store_and_needs_no_hand_over(tmp_path: Path) -> None:
    installed(tmp_path, user="root", socket_group="root")
    service = (tmp_path / "etc/systemd/system/noether.service").read_text()
    assert "User=root" in service and "Environment=NIX_REMOTE" not in service and "ExecStartPre" not in service
    sysusers = (tmp_path / "etc/sysusers.d/noether.conf").read_text().splitlines()
    assert not [ln for ln in sysusers if ln.startswith("u noether ")]
    # A root daemon serving root is exactly who needs the sandbox users.
    assert len([ln for ln in sysusers if ln.startswith("u noether-sbx-")]) == 64


def test_install_refuses_an_unknown_user(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="no user named"):
        installed(tmp_path, user=f"nobody-{uuid.uuid4().hex[:6]}")


def test_the_store_check_names_an_unreachable_nix_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIX_REMOTE", "daemon")
    monkeypatch.setenv("NIX_DAEMON_SOCKET_PATH", str(tmp_path / "missing"))
    err = check_nix_store()
    assert err is not None and err.code == "nix_store_unusable" and "no such socket" in err.message
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "sock"))
    listener.listen(1)
    monkeypatch.setenv("NIX_DAEMON_SOCKET_PATH", str(tmp_path / "sock"))
    try:
        assert check_nix_store() is None
    finally:
        listener.close()


@root_only
def test_a_daemon_without_store_or_limits_refuses_to_start(tmp_path: Path) -> None:
    """As nobody: the store is root's, nix-daemon's socket is nix-users' and no cgroup is nobody's."""
    tmp_path.chmod(0o777)
    site = next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    # The system interpreter: nobody may not reach this test's own (it may live under /root).
    env = {"PATH": os.environ["PATH"], "NOETHER_HOME": str(tmp_path / "home"), "NIX_REMOTE": "daemon",
           "NIX_DAEMON_SOCKET_PATH": str(tmp_path / "no-nix-daemon"), "PYTHONPATH": f"{ROOT}:{site}"}
    proc = subprocess.run(["/usr/bin/python3", "-m", "noether_nix.cli.main", "daemon", "--socket",
                           str(tmp_path / "d.sock")], env=env, capture_output=True, text=True, timeout=60,
                          user=65534, group=65534, extra_groups=[])
    assert proc.returncode == EXIT_HOST_UNUSABLE, proc.stderr
    err = json.loads(proc.stdout)["error"]
    assert err["code"] == "host_unusable"
    codes = [p["code"] for p in err["details"]["problems"]]
    assert codes == ["nix_store_unusable", "limits_unavailable"]
    assert not (tmp_path / "d.sock").exists()  # it never served


@root_only
def test_a_delegated_v2_cgroup_is_claimed_through_a_leaf() -> None:
    unified = Path("/sys/fs/cgroup/unified")
    if not (unified / "cgroup.procs").exists():
        pytest.skip("no cgroup2 hierarchy mounted beside v1 here")
    base = unified / f"svc-test-{uuid.uuid4().hex[:8]}"
    base.mkdir()
    try:
        os.setxattr(base, "user.delegate", b"1")  # what systemd marks a Delegate=yes cgroup with
        code = f"""
import os, json
from pathlib import Path
Path({str(base / 'cgroup.procs')!r}).write_text(str(os.getpid()))
from noether_nix.sandbox import cgroups, delegation
cgroups.ROOT = delegation.ROOT = Path({str(unified)!r})
open(cgroups.ROOT / "cgroup.controllers", "r")  # present on a cgroup2 root
print(json.dumps([str(delegation.claim_v2()), open('/proc/self/cgroup').read(),
                  str(cgroups._v2_base(cgroups._own_paths())), str(delegation.claim_v2())]))
"""
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        claimed, own, v2_base, again = json.loads(proc.stdout)
        assert claimed == str(base) and again == str(base)
        assert f"0::/{base.name}/daemon" in own  # the daemon sits in the leaf ...
        assert v2_base == str(base)  # ... and per-run cgroups go beside it
    finally:
        for d in (base / "daemon", base):
            if d.exists():
                d.rmdir()


def test_install_sets_up_the_sandbox_users_and_their_lock_directory(tmp_path: Path) -> None:
    installed(tmp_path)
    sysusers = (tmp_path / "etc/sysusers.d/noether.conf").read_text()
    assert "g noether-sbx 80000" in sysusers and 'u noether-sbx-63 80063:noether-sbx' in sysusers
    tmpfiles = (tmp_path / "etc/tmpfiles.d/noether.conf").read_text()
    assert "d /run/noether-sandbox-uids 0700 root root -" in tmpfiles.splitlines()
    service = (tmp_path / "etc/systemd/system/noether.service").read_text()
    # ProtectHostname's seccomp filter refuses bwrap --hostname: every sandbox would be refused.
    assert "ProtectHostname" not in "".join(ln for ln in service.splitlines() if not ln.startswith("#"))
    assert "-/run/noether-sandbox-uids" in next(ln for ln in service.splitlines() if ln.startswith("ReadWritePaths="))
    out = uninstall(str(tmp_path), run=lambda cmd: None)
    assert any("noether-sbx-0" in k for k in out["kept"])  # accounts stay, by design


def test_the_sandbox_check_names_why_bwrap_fails_and_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from noether_nix.sandbox import bwrap
    from noether_nix.server import preflight
    from noether_nix.server.preflight import check_sandbox

    real = bwrap.find_bwrap()
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho \"bwrap: Can't set hostname to noether: Operation not permitted\" >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(preflight, "find_bwrap", lambda: str(fake))
    err = check_sandbox("auto")
    assert err is not None and err.code == "isolation_unavailable"
    assert "Can't set hostname" in err.message and "ProtectHostname" in (err.hint or "")
    assert check_sandbox("none") is None  # nothing to build
    monkeypatch.setattr(preflight, "find_bwrap", lambda: None)
    err = check_sandbox("bwrap")
    assert err is not None and "not installed" in err.message
    monkeypatch.setattr(preflight, "find_bwrap", lambda: real)
    assert check_sandbox("auto") is None  # this host's bwrap works
