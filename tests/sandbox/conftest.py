"""Fixtures for running hostile probes in the real bwrap sandbox.

Probes run on the real Nix-built Python runtime with only /nix/store
visible, exactly like stage programs.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio

from noether_nix.model.effects import EffectSet, parse_effect_list
from noether_nix.sandbox.blocking import run_blocking
from noether_nix.sandbox.policy import IsolationPolicy, Limits, policy_from_effects
from noether_nix.sandbox.profile import Profile, load_profile
from noether_nix.sandbox.supervisor import Isolation, Result, run_sandboxed
from noether_nix.sandbox.warm import WarmPool
from tests.processes import marked_sandbox_pids, running

Probe = Callable[..., Awaitable[Result]]


def survivors(marker: str) -> list[int]:
    """Processes of this test's sandboxes (found by their cgroups) that carry ``marker`` and still run."""
    return [pid for pid in marked_sandbox_pids(marker) if running(pid)]


@pytest.fixture(scope="session", autouse=True)
def nix_store_exists() -> None:
    # The default profile binds /nix/store; a fresh machine may not have run Nix yet.
    if not os.path.isdir("/nix/store"):
        os.system("nix-store --init >/dev/null 2>&1 || mkdir -p /nix/store")


@pytest.fixture(scope="session")
def python_runtime(nix_store_exists: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    from noether_nix.nix.runtime import ensure_runtime

    home = os.environ.get("NOETHER_HOME")
    os.environ["NOETHER_HOME"] = str(tmp_path_factory.mktemp("runtime-home"))
    try:
        return ensure_runtime("python").interpreter
    finally:
        if home is None:
            os.environ.pop("NOETHER_HOME", None)
        else:
            os.environ["NOETHER_HOME"] = home


#: How a probe runs: a cold sandbox, a call of a warm sandbox (``sandbox.warm``)
#: that has already served a call of the same program (the same hostile code, run
#: once before on the same warm host, whose result is thrown away), or a cold
#: sandbox run without trio (``sandbox.blocking``, here in a worker thread).
PATHS = ("cold", "warm", "blocking")


@pytest.fixture(params=PATHS)
def sandbox_path(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def probe(python_runtime: str, sandbox_path: str) -> Probe:
    async def run(code: str, *, effects: list[Any] | None = None, stdin: Any = None,
                  limits: Limits | None = None, expect_json: bool = True, policy: IsolationPolicy | None = None,
                  profile: Profile | None = None, env: dict[str, str] | None = None,
                  cgroup_root: Path | None = None, marker: str | None = None, args: list[str] | None = None
                  ) -> Result:
        marker = marker or f"noether-probe-{uuid.uuid4().hex}"
        profile = profile or load_profile()
        if policy is None:
            es: EffectSet = parse_effect_list(effects) if effects else EffectSet.pure()
            policy = policy_from_effects(es, profile=profile)
        import json

        how: dict[str, Any] = {"policy": policy, "limits": limits or Limits(timeout_s=5),
                               "stdin": json.dumps(stdin).encode(), "expect_json": expect_json, "profile": profile,
                               "env": env, "cgroup_root": cgroup_root}
        argv = [python_runtime, "-c", f"# {marker}\n{code}", *(args or [])]
        if sandbox_path == "cold":
            result = await run_sandboxed(argv, isolation=Isolation("bwrap"), **how)
        elif sandbox_path == "blocking":
            result = await trio.to_thread.run_sync(functools.partial(run_blocking, argv, isolation=Isolation("bwrap"),
                                                                     **how))
        else:
            result = await run_warm(argv, how)
        assert survivors(marker) == [], "a sandboxed process survived its run"
        return result

    return run


async def run_warm(argv: list[str], how: dict[str, Any]) -> Result:
    """``argv`` as the second call of a warm sandbox; a run the cold path refuses is refused the same way."""
    pool = WarmPool(max_sandboxes=1)
    try:
        first = await pool.run(argv, **how)
        if first is None:
            await run_sandboxed(argv, isolation=Isolation("bwrap"), **how)  # raises what a cold start raises
            raise AssertionError(f"the warm path was not taken: {pool.cold_keys or pool.counters}")
        result = await pool.run(argv, **how)
        assert result is not None, pool.counters
        assert pool.counters["cold_fallbacks"] == 0
        return result
    finally:
        await pool.aclose()


def sandbox_processes(marker: str) -> list[psutil.Process]:
    """This test process's descendants whose command line holds ``marker``
    (bwrap and the sandboxed program: found from our own children, not by
    scanning the host)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if any(marker in part for part in child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


async def while_running(marker: str, timeout_s: float = 10) -> list[psutil.Process]:
    """Wait (bounded) until the sandboxed program carrying ``marker`` runs; its processes."""
    deadline = trio.current_time() + timeout_s
    while trio.current_time() < deadline:
        procs = sandbox_processes(marker)
        if any(not p.cmdline()[0].endswith("bwrap") for p in procs if p.is_running()):
            return procs
        await trio.sleep(0.05)
    raise AssertionError(f"no sandboxed process with {marker} appeared")
