"""Policy derivation, path validation, limits lowering and `noether sandbox` exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from noether_nix.errors import NoetherError
from noether_nix.model.effects import parse_effect_list
from noether_nix.sandbox.policy import Bind, IsolationPolicy, Limits, policy_from_effects, validate
from noether_nix.sandbox.profile import load_profile


def test_effects_map_to_walls(tmp_path: Path) -> None:
    es = parse_effect_list(["Network", {"effect": "FsRead", "path": str(tmp_path)},
                            {"effect": "FsWrite", "path": "/tmp"}, "Process"])
    p = policy_from_effects(es, profile=load_profile())
    assert p.network is True
    assert Bind(str(tmp_path), str(tmp_path)) in p.ro_binds
    assert p.rw_binds == [Bind("/tmp", "/tmp")]
    pure = policy_from_effects(parse_effect_list([]), profile=load_profile())
    assert pure.network is False and pure.rw_binds == [] and [b.host for b in pure.ro_binds] == ["/nix/store"]


def test_missing_declared_path_is_refused_before_running() -> None:
    es = parse_effect_list([{"effect": "FsRead", "path": "/no/such/dir"}])
    with pytest.raises(NoetherError) as ei:
        policy_from_effects(es, profile=load_profile())
    assert ei.value.code == "policy_path_missing"
    assert ei.value.path == "/no/such/dir"


@pytest.mark.parametrize("host", ["relative/dir", "/tmp/../etc"])
def test_relative_and_dotdot_policy_paths_are_refused(host: str) -> None:
    with pytest.raises(NoetherError) as ei:
        validate(IsolationPolicy(ro_binds=[Bind(host, "/x")], network=False, env_allowlist=[]))
    assert ei.value.code == "invalid_policy_path"


def test_limits_can_only_be_lowered() -> None:
    base = Limits(timeout_s=30, max_output_bytes=1000)
    assert base.lowered(timeout_s=5).timeout_s == 5
    assert base.lowered(timeout_s=500).timeout_s == 30
    assert base.lowered(Limits(max_output_bytes=10)).max_output_bytes == 10
    with pytest.raises(NoetherError):
        base.lowered(timeout_s=-1)


def sandbox(*args: str, policy: dict[str, object] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "noether_nix.cli.main", "sandbox", *args],
                          input=json.dumps(policy) if policy else "", capture_output=True, text=True, timeout=60)


HOST = {"ro_binds": [{"host": d, "sandbox": d} for d in ("/usr", "/lib", "/lib64", "/bin")],
        "network": False, "env_allowlist": []}


def test_exit_codes_follow_upstream() -> None:
    assert sandbox("--", "/bin/sh", "-c", "exit 7", policy=HOST).returncode == 7
    assert sandbox("--", "/bin/sh", "-c", "kill -9 $$", policy=HOST).returncode == 137
    assert sandbox("--", "/no/such/program", policy=HOST).returncode == 127
    assert sandbox(policy=HOST).returncode == 2
    out = sandbox("--", "/bin/sh", "-c", "id -u", policy=HOST)
    assert out.returncode == 0 and out.stdout.strip() == "65534"
