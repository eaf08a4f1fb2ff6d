"""Polymorphic stages (upstream module ``generic``)."""

from __future__ import annotations

from typing import Any

from noether_nix.stdlib._shapes import (
    Impl,
    StageFailure,
    need_list,
    need_number,
    registrar,
    show,
    text_of,
)

IMPLS: dict[str, Impl] = {}
stage = registrar(IMPLS)


@stage("identity")
def identity(value: Any) -> Any:
    return value


@stage("head")
def head(value: Any) -> Any:
    items = need_list(value)
    if not items:
        raise StageFailure("cannot take the head of an empty list")
    return items[0]


@stage("tail")
def tail(value: Any) -> Any:
    return need_list(value)[1:]


@stage("mark_done")
def mark_done(value: Any) -> Any:
    if not isinstance(value, dict):
        raise StageFailure(f"input must be a record, got {show(value)}")
    return {**value, "done": True}


@stage("clamp_percent")
def clamp_percent(value: Any) -> Any:
    # A pass-through whose input and output types are Number in [0, 100]:
    # a value outside the range is refused, not clamped and not passed on.
    number = need_number(value)
    if not 0 <= number <= 100:
        raise StageFailure(f"{text_of(number)} is not a percentage: it must be in [0, 100]")
    return number
