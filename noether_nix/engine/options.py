"""The bottom of the engine stack: what a run may do, and how a failure is retried.

``RunOptions`` is the schema of a run's options (the CLI builds it from its
flags, the daemon decodes it from the request); ``StageError`` is a stage's
failure at a node path; ``with_retries`` is the one retry loop the Retry
operator and the stdlib ``retry`` stage share.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import msgspec

from noether_nix.deferred import trio
from noether_nix.errors import NoetherError
from noether_nix.suggest import unknown_keys

IsolateChoice = Literal["auto", "bwrap", "none"]
#: How a run's sandboxed stages are isolated: bwrap, or explicitly nothing.
Isolation = Literal["bwrap", "none"]


class RunOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    budget_cents: int | None = None
    allow_effects: list[str] | None = None
    allow_capabilities: list[str] | None = None
    timeout_secs: float | None = None
    max_output_bytes: int | None = None
    isolate: IsolateChoice | None = None
    optimize: bool = True
    cache: bool = True
    allow_unsigned: bool = False
    refinement_checks: bool = True
    #: Whether a stage's output must be of its declared output type (off: upstream's behaviour).
    output_type_checks: bool = True
    detach: bool = False
    #: Absolute paths (directories or files) read_file may read / write_file
    #: may write under; each stage sees only the granted path it needs.
    allow_read: list[str] | None = None
    allow_write: list[str] | None = None
    #: Environment variables env_get can see (nothing of the daemon's own).
    env: dict[str, str] | None = None
    #: The text stdin_read returns (the client's standard input).
    stdin: str | None = None
    #: ``summary``: the Pure stdlib calls inside map/filter/reduce and long Sequentials
    #: are one trace entry each (count, failures, timing histogram, first error);
    #: ``full``: every call is traced, with its own events (``engine.fastpath``).
    trace: Literal["summary", "full"] = "summary"


def decode_options(raw: Any) -> RunOptions:
    """Run options from JSON builtins (a request body's ``options``), as a usage error when malformed."""
    opts = dict(raw) if isinstance(raw, dict) else raw
    if isinstance(opts, dict) and opts.pop("detached", False):  # an accepted spelling of `detach`
        opts["detach"] = True
    if isinstance(opts, dict):
        unknown_keys(opts, RunOptions.__struct_fields__, what="run options", path="options", code="usage")
        opts = {k: v for k, v in opts.items() if not k.startswith("_")}  # comments
    try:
        return msgspec.convert(opts if opts is not None else {}, RunOptions)
    except msgspec.ValidationError as e:
        raise NoetherError("usage", f"invalid run options: {e}", path="options", exit_code=2) from None


class StageError(NoetherError):
    """A stage's failure at ``node_path`` (exit 3 unless said otherwise); ``usage``
    is what the stage used before it failed (its sandbox status, isolation…)."""

    def __init__(self, code: str, message: str, node_path: str, *, usage: Any = None, **kw: Any) -> None:
        super().__init__(code, message, path=node_path, exit_code=kw.pop("exit_code", 3), **kw)
        self.usage = usage


# Failures a retry cannot fix: the run's own rules refused the stage.
NOT_RETRYABLE = frozenset({"budget_exceeded", "effect_not_allowed", "isolation_unavailable", "isolation_required",
                           "no_implementation", "no_llm_provider", "arrow_unavailable", "cancelled",
                           "value_too_large"})
# Which attempt of the innermost enclosing Retry a stage runs in (1 outside any).
ATTEMPT: contextvars.ContextVar[int] = contextvars.ContextVar("noether_attempt", default=1)
# Upper bound on a Retry's attempts (the operator or the retry stage): each
# attempt is a traced stage run.
MAX_ATTEMPTS = 1000


class RetriesExhausted(Exception):
    def __init__(self, last: NoetherError) -> None:
        super().__init__(last.message)
        self.last = last


async def with_retries(attempt: Callable[[int], Awaitable[Any]], attempts: int, delay_ms: float | None) -> Any:
    """``attempt(1)``, ``attempt(2)``, … until one succeeds; a failure the run's
    own rules caused (``NOT_RETRYABLE``) is raised at once, and after the last
    attempt ``RetriesExhausted`` carries the last failure. Used by the Retry
    operator and the stdlib ``retry`` stage alike."""
    if attempts > MAX_ATTEMPTS:
        raise NoetherError("too_many_attempts", f"at most {MAX_ATTEMPTS} attempts, not {attempts}", exit_code=3)
    last: NoetherError | None = None
    for n in range(1, max(attempts, 1) + 1):
        # Every attempt lets trio run: a retry of a cheap in-process stage
        # stays cancellable and never starves the daemon's other work.
        await trio.lowlevel.checkpoint()
        token = ATTEMPT.set(n)  # numbers the attempt's stage events and trace entries
        try:
            return await attempt(n)
        except NoetherError as e:
            if e.code in NOT_RETRYABLE:
                raise
            last = e
            if n < attempts and delay_ms:
                await trio.sleep(delay_ms / 1000)
        finally:
            ATTEMPT.reset(token)
    assert last is not None
    raise RetriesExhausted(last)
