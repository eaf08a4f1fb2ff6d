"""The executor seam: one stage call in, one typed outcome out.

A ``StageCall`` says everything needed to run a program once: what to build
(program id, language, code), the walls its effects derive, its input,
limits and isolation. An ``Executor`` turns it into a ``StageOutcome``. The
``LocalExecutor`` builds the program with Nix (once, GC-rooted), derives the
sandbox policy and runs it under bwrap on this host; a remote executor
(REAPI) is a second implementation of the same interface, and tests use an
in-memory one. Nothing above this module knows how a program is launched.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from noether_nix.deferred import trio
from noether_nix.engine.offload import INLINE_MAX_BYTES, maybe_off_loop, small
from noether_nix.engine.options import Isolation, StageError
from noether_nix.model.effects import EffectSet
from noether_nix.model.jcs import serde_compact
from noether_nix.nix.programs import (
    Program,
    build_stage_program,
    build_stage_program_async,
    store_closure,
)
from noether_nix.nix.registry import ProgramRegistry
from noether_nix.sandbox.identity import RunAs
from noether_nix.sandbox.launch import Isolation as SandboxIsolation
from noether_nix.sandbox.outcome import Result
from noether_nix.sandbox.policy import IsolationPolicy, Limits, policy_from_effects
from noether_nix.sandbox.profile import Profile, load_profile

if TYPE_CHECKING:
    from noether_nix.sandbox.warm import WarmPool


class StageCall(msgspec.Struct, frozen=True, kw_only=True):
    """One run of one program: everything an executor needs, nothing of the graph."""

    program_id: str  # a stage ID, or a synthetic ID carrying the code's hash
    language: str
    code: str
    effects: EffectSet
    input: Any
    limits: Limits
    isolation: Isolation
    label: str  # how errors name it ("stage text_upper (1a2b3c4d)")
    run_as: RunAs | None = None
    #: The daemon peer (uid) the call is for, None embedded: a warm sandbox serves one peer
    #: only, also where every peer's sandboxes run as the same host user (a daemon not root).
    peer: int | None = None
    #: Variables the program sees besides the profile's; ``clear_env`` drops
    #: the profile's allowlist (env_get sees exactly the run's variables).
    env: dict[str, str] | None = None
    clear_env: bool = False
    #: False under ``--no-cache``: an executor with a cache of its own (a remote
    #: ActionCache) runs the call instead of answering from it.
    use_cache: bool = True


class StageOutcome(msgspec.Struct, kw_only=True):
    status: str  # a sandbox Result status: ok, error, timed_out, output_limit, memory_limit, …
    message: str
    isolation: str
    output: Any = None
    exit_code: int | None = None
    stderr_tail: str = ""
    wall_ms: int = 0
    cpu_ms: int | None = None
    max_rss_kb: int | None = None
    build_ms: int | None = None
    #: Served from a cache instead of run (a remote ActionCache hit).
    cached: bool = False
    #: Where and when it ran, for executors that run elsewhere.
    remote: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class Executor(Protocol):
    async def execute(self, call: StageCall) -> StageOutcome: ...


#: How much of what a stage printed is kept with its trace entry and error (the tail, in characters).
LOG_KEEP = 8192
_TRACEBACK = "Traceback (most recent call last):"
_STAGE_FRAME = re.compile(r'^  File "stage\.py", line (\d+), in (.+)$', re.M)
_JS_FRAME_LINE = re.compile(r"^\s+at \S")
_JS_STAGE_FRAME = re.compile(r"^\s+at (?:(\S+) \()?stage\.js:(\d+):\d+\)?$", re.M)


def stage_log(text: str, keep: int = LOG_KEEP) -> str | None:
    """What a stage printed (its stdout and stderr, in order), its last ``keep`` characters
    from a line start; None when it printed nothing."""
    if not text.strip():
        return None
    if len(text) <= keep:
        return text
    tail = text[-keep:]
    cut = tail.find("\n")
    return "…\n" + (tail[cut + 1:] if 0 <= cut < len(tail) - 1 else tail)


def split_traceback(log: str) -> tuple[str, str | None, str, str | None]:
    """A failed stage's output as (what it printed, the traceback it ended with, the error line,
    where in the stage's own code it was raised): a Python traceback (``File "stage.py", line 2,
    in helper``) or a JavaScript stack (``at helper (stage.js:3:9)``); else (log, None, its last line, None)."""
    at = log.rfind(_TRACEBACK)
    if at >= 0:  # Python: the error is the traceback's last line, the place its last stage.py frame
        trace = log[at:].rstrip("\n")
        frames = _STAGE_FRAME.findall(trace)
        where = f"stage.py line {frames[-1][0]}, in {frames[-1][1]}" if frames else None
        return log[:at], trace, trace.splitlines()[-1], where
    lines = log.splitlines()
    first_frame = next((i for i, line in enumerate(lines) if _JS_FRAME_LINE.match(line)), None)
    trace = "\n".join(lines[first_frame - 1:]) if first_frame else ""
    frame = _JS_STAGE_FRAME.search(trace)
    if first_frame and frame:  # JavaScript: the error is the line above its first frame
        start = first_frame - 1
        where = f"stage.js line {frame.group(2)}, in {frame.group(1) or 'the stage'}"
        return "\n".join(lines[:start]) + ("\n" if start else ""), trace, lines[start], where
    return log, None, lines[-1] if lines else "", None


def outcome_value(outcome: StageOutcome, label: str, node_path: str) -> Any:
    """The output of a successful outcome; a failed one as the ``stage_<status>`` error users see.

    Its message ends with the stage's own error line (an exception with the
    line of the stage's code it was raised at); its details keep what the
    stage printed and its traceback."""
    if outcome.ok:
        return outcome.output
    tail = outcome.stderr_tail.strip()
    printed, traceback, detail, where = split_traceback(tail)
    if where:
        detail += f" ({where})"
    message = outcome.message if outcome.status != "error" else f"exited with status {outcome.exit_code}"
    if outcome.status == "error" and traceback is not None:
        message = detail  # the exception says more than the exit status
    elif detail and detail not in message:
        message += f": {detail}"
    details: dict[str, Any] = {"status": outcome.status, "stderr_tail": outcome.stderr_tail[-2000:]}
    if traceback is not None:
        details["traceback"] = stage_log(traceback)
    if printed.strip():
        details["printed"] = stage_log(printed)
    raise StageError(f"stage_{outcome.status}", f"{label} failed: {message}", node_path, details=details)


def parse_output(raw: bytes) -> tuple[bool, Any]:
    """A program's stdout as the one JSON value it must be: ``(True, value)``,
    or ``(False, why not)``.

    msgspec reads strict JSON. What it refuses but Python's reader takes (NaN,
    Infinity, 1e400, lone surrogates) is read, and then refused with its own
    code by the value checks every stage output passes (``model.values.check_value``);
    what neither reads is the program breaking the protocol."""
    try:
        return True, msgspec.json.decode(raw)
    except RecursionError:
        return False, "it is nested deeper than can be read"
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        strict_reason = str(e)
    try:
        return True, json.loads(raw.decode("utf-8"))
    except RecursionError:
        return False, "it is nested deeper than can be read"
    except ValueError:  # not JSON at all, not UTF-8, or an integer of thousands of digits
        return False, strict_reason


class LocalExecutor:
    """Build with Nix on this host, run under bwrap on this host: a Python
    program in a warm sandbox when one can serve it (``sandbox.warm``), else cold."""

    def __init__(self, programs: ProgramRegistry, *, profile: str = "default",
                 threads: trio.CapacityLimiter | None = None, warm_sandboxes: int = 0,
                 warm_idle_s: float = 60.0) -> None:
        self.programs = programs
        self.profile_name = profile
        #: Worker threads for encoding large inputs and reading large outputs (``engine.offload``).
        self.threads = threads
        self.warm_sandboxes = warm_sandboxes
        self.warm_idle_s = warm_idle_s
        self._warm: WarmPool | None = None

    #: Calls of a program that go cold before it gets a warm sandbox (``WarmPool.warm_after``);
    #: the engine sets 0 for a daemon.
    warm_after = 1

    def warm_pool(self) -> WarmPool | None:
        """This trio run's pool (one left by an earlier run, whose loop has ended, is killed)."""
        if self.warm_sandboxes <= 0:
            return None
        token = trio.lowlevel.current_trio_token()
        if self._warm is not None and self._warm.token is not token:
            self._warm.abandon()
            self._warm = None
        if self._warm is None:
            from noether_nix.sandbox.warm import WarmPool

            self._warm = WarmPool(max_sandboxes=self.warm_sandboxes, idle_s=self.warm_idle_s,
                                  warm_after=self.warm_after)
        return self._warm

    async def close_idle(self) -> None:
        """Close the idle warm sandboxes (the end of an embedded run)."""
        if self._warm is not None and self._warm.token is trio.lowlevel.current_trio_token():
            await self._warm.close_idle()

    async def aclose(self) -> None:
        if self._warm is not None and self._warm.token is trio.lowlevel.current_trio_token():
            await self._warm.aclose()
        self._warm = None

    def describe_warm(self) -> dict[str, Any]:
        if self._warm is None:
            return {"max_sandboxes": self.warm_sandboxes, "idle_expiry_s": self.warm_idle_s, "busy": [], "idle": []}
        return self._warm.describe()

    async def execute(self, call: StageCall) -> StageOutcome:
        from noether_nix.sandbox.supervisor import run_sandboxed

        program = await build_stage_program_async(call.program_id, call.language, call.code, registry=self.programs)
        profile = load_profile(self.profile_name)
        closure = program.closure or await trio.to_thread.run_sync(store_closure, program.store_path)
        policy = _policy(call, profile, closure)
        stdin = await maybe_off_loop(small(call.input), serde_compact, call.input, limiter=self.threads)
        # stdout is read here, not by the sandbox layer: strictly, and off the event loop when large.
        result = None
        pool = self.warm_pool() if call.isolation == "bwrap" and call.language == "python" else None
        if pool is not None:
            result = await pool.run(program.argv, policy=policy, limits=call.limits, profile=profile, stdin=stdin,
                                    env=call.env, run_as=call.run_as, peer=call.peer, expect_json=False)
        if result is None:
            result = await run_sandboxed(program.argv, policy=policy, limits=call.limits, stdin=stdin,
                                         isolation=SandboxIsolation(call.isolation), profile=profile, env=call.env,
                                         run_as=call.run_as, expect_json=False)
        parsed = None
        if result.ok:
            raw = result.stdout_bytes or b""
            parsed = await maybe_off_loop(len(raw) <= INLINE_MAX_BYTES, parse_output, raw, limiter=self.threads)
        return _outcome(result, parsed, program)


class BlockingExecutor:
    """The ``LocalExecutor``'s twin for runs without an event loop (``engine.noloop``): the
    same program, policy and input, the sandbox run cold by ``sandbox.blocking``
    in this thread. Its ``execute`` never suspends."""

    def __init__(self, programs: ProgramRegistry, *, profile: str = "default") -> None:
        self.programs = programs
        self.profile_name = profile

    async def execute(self, call: StageCall) -> StageOutcome:
        from noether_nix.sandbox.blocking import run_blocking

        program = build_stage_program(call.program_id, call.language, call.code, registry=self.programs)
        profile = load_profile(self.profile_name)
        policy = _policy(call, profile, program.closure or store_closure(program.store_path))
        result = run_blocking(program.argv, policy=policy, limits=call.limits, stdin=serde_compact(call.input),
                              isolation=SandboxIsolation(call.isolation), profile=profile, env=call.env,
                              run_as=call.run_as, expect_json=False)
        return _outcome(result, parse_output(result.stdout_bytes or b"") if result.ok else None, program)


def _policy(call: StageCall, profile: Profile, closure: list[str]) -> IsolationPolicy:
    policy = policy_from_effects(call.effects, profile=profile, store_paths=closure)
    if call.clear_env:
        policy = msgspec.structs.replace(policy, env_allowlist=[])
    return policy


def _outcome(result: Result, parsed: tuple[bool, Any] | None, program: Program) -> StageOutcome:
    """A sandbox's Result as the stage's outcome; ``parsed``: its stdout read (``parse_output``) when it went well."""
    status, message, output = result.status.value, result.message, None
    if parsed is not None:
        ok, value = parsed
        if ok:
            output = value
        else:
            shown = (result.stdout_bytes or b"")[:200].decode("utf-8", "replace")
            status, message = "protocol_error", f"stdout must be exactly one JSON value ({value}); got: {shown!r}"
    return StageOutcome(status=status, message=message, isolation=result.isolation,
                        output=output, exit_code=result.exit_code, stderr_tail=result.stderr_tail,
                        wall_ms=result.wall_ms, cpu_ms=result.cpu_ms, max_rss_kb=result.max_rss_kb,
                        build_ms=program.build_ms if program.built else None)
