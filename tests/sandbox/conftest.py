"""Fixtures for running hostile probes in the real bwrap sandbox.

The interpreter is the host's /usr/bin/python3 with /usr, /lib and /lib64
bound read-only *for these tests only*: the Nix-built runtime (issue 4) is
not in place yet. Stage programs in production see only /nix/store.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from noether_nix.model.effects import EffectSet, parse_effect_list
from noether_nix.sandbox.policy import Limits, policy_from_effects
from noether_nix.sandbox.profile import load_profile
from noether_nix.sandbox.supervisor import Isolation, Result, run_sandboxed

HOST_RUNTIME = ["/usr", "/lib", "/lib64", "/bin"]
PYTHON = "/usr/bin/python3"

Probe = Callable[..., Awaitable[Result]]


def survivors(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.fixture(scope="session", autouse=True)
def nix_store_exists() -> None:
    # The default profile binds /nix/store; a fresh machine may not have run Nix yet.
    if not os.path.isdir("/nix/store"):
        os.system("nix-store --init >/dev/null 2>&1 || mkdir -p /nix/store")


@pytest.fixture
def probe() -> Probe:
    async def run(code: str, *, effects: list[Any] | None = None, stdin: Any = None,
                  limits: Limits | None = None, expect_json: bool = True) -> Result:
        marker = f"noether-probe-{uuid.uuid4().hex}"
        es: EffectSet = parse_effect_list(effects) if effects else EffectSet.pure()
        policy = policy_from_effects(es, profile=load_profile(), extra_ro=HOST_RUNTIME)
        import json

        result = await run_sandboxed(
            [PYTHON, "-c", f"# {marker}\n{code}"],
            policy=policy,
            limits=limits or Limits(timeout_s=5),
            stdin=json.dumps(stdin).encode(),
            isolation=Isolation("bwrap"),
            expect_json=expect_json,
        )
        assert survivors(marker) == [], "a sandboxed process survived its run"
        return result

    return run
