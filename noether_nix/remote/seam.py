"""The executor seam's types, as the engine defines them.

A stand-in until ``noether_nix.engine.executor`` lands: the same fields and
meaning, so the remote executor and worker switch to importing them from
there without another change.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import msgspec

from noether_nix.model.effects import EffectSet
from noether_nix.sandbox.policy import Limits
from noether_nix.sandbox.supervisor import RunAs

Isolation = Literal["bwrap", "none"]


class StageCall(msgspec.Struct, frozen=True, kw_only=True):
    program_id: str
    language: str
    code: str
    effects: EffectSet
    input: Any
    limits: Limits
    isolation: Isolation
    label: str
    run_as: RunAs | None = None
    env: dict[str, str] | None = None
    clear_env: bool = False


class StageOutcome(msgspec.Struct, kw_only=True):
    status: str
    message: str
    isolation: str
    output: Any = None
    exit_code: int | None = None
    stderr_tail: str = ""
    wall_ms: int = 0
    cpu_ms: int | None = None
    max_rss_kb: int | None = None
    build_ms: int | None = None
    cached: bool = False
    remote: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class Executor(Protocol):
    async def execute(self, call: StageCall) -> StageOutcome: ...
