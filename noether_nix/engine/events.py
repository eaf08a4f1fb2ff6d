"""Trace events, streamed while a run executes and stored for replay.

Each event is a msgspec Struct tagged on ``"event"``; the server writes them
as NDJSON lines, the CLI renders them as progress, the trace store keeps
them. Times are milliseconds; hashes are upstream's ``hash_value``
(sha256 of serde-compact JSON).
"""

from __future__ import annotations

from typing import Any, Literal, Union

import msgspec

RunStatus = Literal["ok", "failed", "cancelled"]


class _Ev(msgspec.Struct, frozen=True, tag_field="event", omit_defaults=True):
    run_id: str


class RunAccepted(_Ev, frozen=True, tag="run_accepted"):
    composition_id: str
    started_at: str
    effects: list[str] = msgspec.field(default_factory=list)


class StageStarted(_Ev, frozen=True, tag="stage_started"):
    node_path: str
    stage_id: str
    name: str | None = None
    attempt: int = 1
    isolation: str | None = None


class StageFinished(_Ev, frozen=True, tag="stage_finished"):
    node_path: str
    stage_id: str
    status: str  # a sandbox Result status ("ok", "error", "timed_out", …) or "cached"/"refused"
    name: str | None = None
    attempt: int = 1
    cached: bool = False
    wall_ms: int = 0
    cpu_ms: int | None = None
    max_rss_kb: int | None = None
    build_ms: int | None = None
    spent_cents: int = 0
    input_hash: str | None = None
    output_hash: str | None = None
    isolation: str | None = None
    message: str | None = None


class StageProgress(_Ev, frozen=True, tag="stage_progress"):
    """How far a stage that runs another on each item (map, filter, reduce) has got:
    sent when it starts, now and then while it runs, and when it is done."""

    node_path: str
    done: int
    total: int


class StageOutput(_Ev, frozen=True, tag="stage_output"):
    """Text a stage wrote to the run's output stream (stdout_write)."""

    node_path: str
    text: str


class RunWarning(_Ev, frozen=True, tag="warning"):
    code: str
    message: str
    node_path: str | None = None


class RunFinished(_Ev, frozen=True, tag="run_finished"):
    """The last event of every run, ok, failed or cancelled: the run's result.

    The engine returns it, stores it and streams it; the daemon sends it as
    the stream's last line, and the CLI's ``run`` data is made of it."""

    composition_id: str
    status: RunStatus
    output: Any
    error: dict[str, Any] | None
    duration_ms: int
    spent_cents: int
    trace: dict[str, Any]
    warnings: list[str]
    effects: list[str]
    cache: dict[str, int]


Event = Union[RunAccepted, StageStarted, StageFinished, StageProgress, StageOutput, RunWarning, RunFinished]
