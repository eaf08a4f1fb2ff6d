"""List operations (upstream module ``collections``).

``map``, ``filter`` and ``reduce`` call other stages, so the engine runs
them; see ``registry.HIGHER_ORDER``.
"""

from __future__ import annotations

from typing import Any

from noether_nix.model.jcs import jcs
from noether_nix.stdlib._shapes import (
    Impl,
    StageFailure,
    field_list,
    finite,
    is_number,
    need_count,
    need_list,
    need_record,
    optional_bool,
    optional_text,
    registrar,
    show,
    text_of,
)

IMPLS: dict[str, Impl] = {}
stage = registrar(IMPLS)


def _sort_kind(value: Any) -> str:
    if is_number(value):
        return "number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, bool):
        return "boolean"
    return "other"


@stage("sort")
def sort(value: Any) -> Any:
    if isinstance(value, list):
        items, key, descending = value, None, False
    else:
        record = need_record(value, "items", what="input (a list, or a record with items, key?, descending?)")
        items = field_list(record, "items")
        key = optional_text(record, "key")
        descending = bool(optional_bool(record, "descending"))

    def sort_value(item: Any) -> Any:
        # Upstream: an item without the key field is compared as itself.
        if key is not None and isinstance(item, dict) and key in item:
            return item[key]
        return item

    values = [sort_value(item) for item in items]
    kinds = {_sort_kind(v) for v in values}
    comparable = kinds - {"other"}
    if len(comparable) > 1 or (comparable and "other" in kinds):
        # Upstream treats such pairs as equal, which is no order at all: the
        # result would depend on the sorting algorithm. Say so instead.
        found = ", ".join(sorted(kinds - {"other"}) + (["other values"] if "other" in kinds else []))
        subject = f"values of field '{key}'" if key is not None else "items"
        raise StageFailure(
            f"cannot sort {subject} of different kinds ({found}); "
            "they must all be numbers, all text or all booleans"
        )
    if not comparable:
        # Nulls, lists and records have no order: upstream keeps them as they are.
        return list(items)
    order = sorted(range(len(items)), key=values.__getitem__, reverse=descending)
    return [items[i] for i in order]


@stage("group_by")
def group_by(value: Any) -> Any:
    record = need_record(value, "items", "key")
    items = field_list(record, "items")
    key = record["key"]
    if not isinstance(key, str):
        raise StageFailure(f"field 'key' must be text, got {show(key)}")
    groups: dict[str, list[Any]] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise StageFailure(f"item {i} must be a record with field '{key}', got {show(item)}")
        if key not in item:
            raise StageFailure(f"item {i} has no field '{key}' to group by")
        groups.setdefault(text_of(item[key]), []).append(item)
    # Upstream builds a BTreeMap: groups come out in key order.
    return {k: groups[k] for k in sorted(groups)}


@stage("flatten")
def flatten(value: Any) -> Any:
    out: list[Any] = []
    for item in need_list(value):
        # As upstream: an element that is not a list is kept as it is.
        if isinstance(item, list):
            out.extend(item)
        else:
            out.append(item)
    return out


@stage("zip")
def zip_(value: Any) -> Any:
    record = need_record(value, "left", "right")
    left, right = field_list(record, "left"), field_list(record, "right")
    return [{"left": a, "right": b} for a, b in zip(left, right, strict=False)]


@stage("take")
def take(value: Any) -> Any:
    record = need_record(value, "items", "count")
    items = field_list(record, "items")
    return items[: need_count(record["count"], "field 'count'")]


def _numbers(value: Any) -> list[int | float]:
    items = need_list(value)
    for i, item in enumerate(items):
        if not is_number(item):
            raise StageFailure(f"item {i} must be a number, got {show(item)}")
    return items


def _f64(x: int | float) -> float:
    try:
        return float(x)
    except OverflowError:
        raise StageFailure(f"{x} is too large for a 64-bit float") from None


def _sum(items: list[int | float]) -> float:
    # Left to right in f64, as Rust's Iterator::sum; Python 3.12's sum()
    # compensates rounding and would print 0.6 where upstream prints
    # 0.6000000000000001.
    total = 0.0
    for x in items:
        total += _f64(x)
    return finite(total, "the sum")


def _nonempty(value: Any, what: str) -> list[int | float]:
    items = _numbers(value)
    if not items:
        raise StageFailure(f"cannot compute the {what} of an empty list")
    return items


@stage("num_sum")
def num_sum(value: Any) -> Any:
    return _sum(_numbers(value))


@stage("num_avg")
def num_avg(value: Any) -> Any:
    items = _nonempty(value, "average")
    return finite(_sum(items) / len(items), "the average")


@stage("num_min")
def num_min(value: Any) -> Any:
    return min(_f64(x) for x in _nonempty(value, "minimum"))


@stage("num_max")
def num_max(value: Any) -> Any:
    return max(_f64(x) for x in _nonempty(value, "maximum"))


@stage("list_dedup")
def list_dedup(value: Any) -> Any:
    # Equal means equal canonical JSON: 1 and 1.0 are one number, and
    # records are equal whatever their key order.
    seen: set[bytes] = set()
    out = []
    for item in need_list(value):
        canonical = jcs(item)
        if canonical not in seen:
            seen.add(canonical)
            out.append(item)
    return out


@stage("list_length")
def list_length(value: Any) -> Any:
    # Upstream returns an f64 (serialised 3.0); JCS makes it 3.
    return float(len(need_list(value)))
