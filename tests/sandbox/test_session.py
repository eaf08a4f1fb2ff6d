"""Sandbox sessions: a long-lived sandboxed program spoken to in JSON lines."""

from __future__ import annotations

import time

import pytest
import trio

from noether_nix.model.effects import EffectSet
from noether_nix.nix.runtime import ensure_runtime
from noether_nix.sandbox.policy import Limits, policy_from_effects
from noether_nix.sandbox.profile import load_profile
from noether_nix.sandbox.session import SandboxSession, SessionError, open_session
from noether_nix.sandbox.supervisor import Isolation
from tests.sandbox.conftest import survivors


async def gone_within(seconds: float, marker: str) -> bool:
    deadline = time.monotonic() + seconds
    while survivors(marker) and time.monotonic() < deadline:
        await trio.sleep(0.05)
    return not survivors(marker)

# Answers {"id", "slept"} after sleeping the requested seconds.
ECHO = """
import json, sys, time
for line in sys.stdin:
    req = json.loads(line)
    time.sleep(req.get("sleep", 0))
    sys.stdout.write(json.dumps({"id": req["id"], "slept": req.get("sleep", 0), "tag": "session-probe"}) + "\\n")
    sys.stdout.flush()
"""


async def start(timeout_s: float = 20) -> SandboxSession:
    python = await trio.to_thread.run_sync(ensure_runtime, "python")
    profile = load_profile("default")
    return await open_session([python.interpreter, "-I", "-S", "-c", ECHO + "# session-probe-marker\n"],
                              policy=policy_from_effects(EffectSet.pure(), profile=profile),
                              limits=Limits(timeout_s=timeout_s), isolation=Isolation("bwrap"), profile=profile)


async def test_an_answer_to_a_cancelled_request_is_never_taken_for_the_next_one() -> None:
    session = await start()
    try:
        with trio.move_on_after(0.3):
            await session.request({"sleep": 1.0})  # cancelled while the program still works on it
        answer = await session.request({"sleep": 0})
        assert answer["slept"] == 0  # its own answer, not the stale {"slept": 1.0}
    finally:
        await session.aclose()
    assert await gone_within(1, "session-probe-marker")


async def test_a_request_past_its_timeout_kills_the_session() -> None:
    session = await start()
    started = time.monotonic()
    with pytest.raises(SessionError, match=r"no answer within 0\.5s"):
        await session.request({"sleep": 30}, timeout_s=0.5)
    assert time.monotonic() - started < 10
    with pytest.raises(SessionError):
        await session.request({"sleep": 0})
    assert await gone_within(1, "session-probe-marker")


async def test_a_session_outlives_trios_idle_worker_threads() -> None:
    # Sandboxes are forked from a long-lived thread: an idle 11 s does not kill them.
    session = await start()
    try:
        await trio.sleep(11)
        assert (await session.request({"sleep": 0}))["tag"] == "session-probe"
    finally:
        await session.aclose()
