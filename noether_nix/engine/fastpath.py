"""The fast Pure path: in-process Pure stdlib calls in bulk, summarised.

Inside ``map`` / ``filter`` / ``reduce`` and long Sequentials, a Pure
stdlib stage (in-process, free, without refinements to check) runs in a
tight loop: no events and no trace entry per call, its inputs checked a
chunk at a time, its calls timed by sample. What the calls did is one
trace entry (``Summary.entry``): how many, how many failed, the first
error, the total time and a histogram of call durations. ``RunOptions``
``trace: "full"`` runs every call through ``Interpreter.run_stage`` instead,
each with its own events and entry.

Nothing a call could observe changes: the same implementation gets the
same value, a failure is the same ``stage_failed`` at the same node path,
an input of the wrong type the same ``stage_input_mismatch``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec

from noether_nix.model.jcs import encoded_size, size_bounds
from noether_nix.model.types import (
    AnyType,
    BoolType,
    NType,
    NullType,
    NumberType,
    TextType,
    VarType,
)

#: Calls per chunk: inputs are type-checked and outputs size-bounded once per chunk.
CHUNK = 1024
#: Between chunks run on the event loop, a trio checkpoint (the run cancellable, other
#: tasks served) once this long has passed since the last, and after the last chunk: a
#: chunk of the cheapest calls takes ~50 µs, a checkpoint ~5-10 µs.
CHECKPOINT_S = 0.001
#: Calls timed one by one at the start of each chunk (the histogram's sample: 1 in 64).
SAMPLED_PER_CHUNK = 16
#: Histogram bucket upper bounds in microseconds: 1 µs, 2 µs, 4 µs … 2^24 µs (~17 s), then "more".
BOUNDS_US = tuple(1 << i for i in range(25))
#: A Sequential this long or longer runs its consecutive Pure stdlib stages on the fast path.
LONG_SEQUENTIAL = 16

#: Any value conforms.
ANY: frozenset[type] = frozenset()


class FastPure(msgspec.Struct, frozen=True):
    """A stage the fast path may run: its implementation and how to check its input quickly."""

    impl: Callable[[Any], Any]
    #: The exact Python types its input may have (``ANY``: every value), or None:
    #: the type needs a full check (``model.values.conforms``) per call.
    input_types: frozenset[type] | None
    #: The same function on a text input, as a ``str`` method (``stdlib.text.ON_TEXT``):
    #: mapped over a chunk whose inputs passed as text.
    on_text: Callable[[str], Any] | None = None


def simple_types(t: NType) -> frozenset[type] | None:
    """The Python types the values of ``t`` have, when that decides conformance."""
    match t:
        case AnyType() | VarType():
            return ANY
        case TextType():
            return frozenset({str})
        case NumberType():
            return frozenset({int, float})
        case BoolType():
            return frozenset({bool})
        case NullType():
            return frozenset({type(None)})
    return None


_TEXT = frozenset({str})


def all_of(values: list[Any], types: frozenset[type] | None) -> bool:
    """Whether every value has one of ``types`` (a C-speed check), so no per-call check is needed."""
    if types is ANY:
        return True
    if types is None:
        return False
    if types == _TEXT:
        try:
            "".join(values)  # one C pass that fails on anything but text
        except TypeError:
            return False
        return True
    return set(map(type, values)) <= types


class Summary:
    """What a run of fast calls did, for their one trace entry."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.calls = 0
        self.failures = 0
        self.first_error: dict[str, Any] | None = None
        self.counts = [0] * (len(BOUNDS_US) + 1)
        self.sampled = 0

    def sample(self, ns: int) -> None:
        us = ns // 1000
        self.counts[min(us.bit_length(), len(BOUNDS_US))] += 1
        self.sampled += 1

    def call_chunk(self, impl: Callable[[Any], Any], chunk: list[Any],
                   bulk: Callable[[Any], Any] | None = None) -> list[Any]:
        """``impl`` on every value of ``chunk``, the first ``SAMPLED_PER_CHUNK`` timed one by one,
        the rest through ``bulk`` when given (the same function at C speed).
        Raises what ``impl`` raises (``index_of_failure`` finds which call)."""
        clock = time.perf_counter_ns
        k = min(SAMPLED_PER_CHUNK, len(chunk))
        out = []
        for v in chunk[:k]:
            t = clock()
            out.append(impl(v))
            self.sample(clock() - t)
        if k < len(chunk):
            out += map(bulk or impl, chunk[k:])
        self.calls += len(chunk)
        return out

    def failed(self, code: str, message: str, path: str) -> None:
        self.failures += 1
        if self.first_error is None:
            self.first_error = {"code": code, "message": message, "path": path}

    def histogram(self) -> dict[str, Any]:
        last = max((i for i, c in enumerate(self.counts) if c), default=-1)
        return {"bounds_us": list(BOUNDS_US[: min(last + 1, len(BOUNDS_US))]) + (["more"] if last == len(BOUNDS_US)
                                                                                   else []),
                "counts": self.counts[: last + 1], "sampled": self.sampled}

    def entry(self, *, stage_id: str | None, name: str | None, node_path: str, attempt: int) -> dict[str, Any]:
        status: Any = "Ok" if not self.failures else {"Failed": {k: self.first_error[k] for k in ("code", "message")}
                                                       if self.first_error else {}}
        return {"stage_id": stage_id, "node_path": node_path, "name": name, "status": status, "attempt": attempt,
                "duration_ms": int((time.monotonic() - self.started) * 1000), "isolation": "in-process",
                "summary": {"calls": self.calls, "failures": self.failures, "first_error": self.first_error,
                            "histogram": self.histogram()}}


#: A chunk whose input is at most this many bytes of JSON runs on the event loop (a few
#: times ``engine.offload.INLINE_MAX_BYTES``, split over many cheap calls); a larger
#: one goes to a worker thread.
CHUNK_INLINE_BYTES = 256 * 1024


def chunk_is_small(chunk: list[Any]) -> bool:
    return size_bounds(chunk, CHUNK_INLINE_BYTES) is not None


def scan_chunk(chunk: list[Any], types: frozenset[type] | None) -> tuple[bool, bool]:
    """``all_of(chunk, types)`` and ``chunk_is_small(chunk)``; for a text stage, one C pass
    answers both (all text, and how many characters: ``size_bounds``' upper bound)."""
    if types == _TEXT:
        try:
            chars = len("".join(chunk))
        except TypeError:
            return False, chunk_is_small(chunk)
        n = len(chunk)
        return True, 2 + max(n - 1, 0) + 2 * n + 6 * chars <= CHUNK_INLINE_BYTES
    return all_of(chunk, types), chunk_is_small(chunk)


_SCALARS = frozenset({int, float, bool, type(None)})


class OutputBound:
    """Keeps a growing list of outputs under ``limit`` bytes of JSON, a chunk at a time,
    without encoding it: bounds from the values' types and lengths decide, and only
    when they cannot is the list measured (``model.jcs.encoded_size``)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.low = self.high = 2  # the brackets

    def over(self, out: list[Any], chunk: list[Any]) -> bool:
        """After ``chunk`` was appended to ``out``: is ``out`` certainly over the limit?"""
        n = len(chunk)
        try:
            chars = len("".join(chunk))  # text only (one C pass), else TypeError
            types: set[type] = {str}
        except TypeError:
            types = set(map(type, chunk))
        if types == {str}:
            self.low += chars + 3 * n  # quotes and a comma; at least one byte a character
            self.high += 6 * chars + 3 * n  # at most six (an escape)
        elif types <= _SCALARS:
            self.low += 2 * n
            self.high += 33 * n  # a number's shortest form is at most 24 bytes, plus a comma
        else:
            size = encoded_size(chunk, self.limit)
            self.low += size - 1
            self.high += size
        if self.high <= self.limit:
            return False
        if self.low > self.limit:
            return True
        exact = encoded_size(out, self.limit)
        self.low = self.high = exact
        return exact > self.limit


def index_of_failure(impl: Callable[[Any], Any], chunk: list[Any]) -> tuple[int, BaseException]:
    """Which call of a chunk failed, and with what: the chunk is run again one call at a
    time (Pure stages are deterministic: the same call fails the same way)."""
    for i, v in enumerate(chunk):
        try:
            impl(v)
        except BaseException as e:  # the caller re-raises what it does not handle
            return i, e
    raise AssertionError("a Pure stage failed once and not again")
