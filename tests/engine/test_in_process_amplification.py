"""In-process stages whose work or output outgrows their input stay within the caps.

The value cap (``max_value_bytes``) was checked on a stage's output once the
output existed. A stage whose output multiplies its input built it first:
``text_join`` of ten thousand empty items by a 32 KB delimiter (a 65 KB
input, run inline on the event loop) built 356 MB; larger inputs build tens
of gigabytes and get the daemon killed. So did ``text_replace``,
``text_template``, ``regex_replace`` and the error list of
``json_schema_validate``. ``csv_write`` of 5,000 one-column records held the
event loop 11 s (every record writes every column). Compiling a user's regex
is not covered by the regex module's timeout: ``(?:a{1000}){10000}``, 18
characters, compiled for 4 s into 2 GB, and 256 compiled patterns were kept.
Each case here is measured (tracemalloc's peak, the loop's longest stall) on
the way a user would meet it: a run.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from noether_nix.engine.engine import Engine, RunOptions, RunResult
from noether_nix.settings import EngineSettings
from tests.engine.conftest import graph
from tests.engine.test_off_loop import loop_stall_while

MB = 1024 * 1024


@pytest.fixture
def traced() -> Iterator[None]:
    """Python's allocations are traced (it slows allocation-heavy work several times over)."""
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


async def peak_while(work: Callable[[], Awaitable[RunResult]]) -> tuple[int, RunResult]:
    """The most memory Python held at once while ``work`` ran, over what it held before."""
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    result = await work()
    return tracemalloc.get_traced_memory()[1] - before, result


def one(stage: str, **config: Any) -> dict[str, Any]:
    return graph({"op": "Stage", "id": stage, **({"config": config} if config else {})})


@pytest.mark.parametrize(("stage", "value"), [
    # 65 KB of input, 356 MB of output.
    ("text_join", {"items": [""] * 10_900, "delimiter": "x" * 32_700}),
    # Each of 20,000 characters becomes 20,000: 400 MB.
    ("text_replace", {"text": "a" * 20_000, "from": "a", "to": "b" * 20_000}),
    # 10,000 placeholders of a 30 KB value: 300 MB.
    ("text_template", {"template": "{{x}}" * 10_000, "variables": {"x": "y" * 30_000}}),
    # An empty match at each of 20,001 places, each replaced by 20,000 characters: 400 MB.
    ("regex_replace", {"text": "a" * 20_000, "pattern": "", "replacement": "b" * 20_000}),
    # Every one of 20,000 items fails a 20,000-character pattern, and each error quotes it: 400 MB.
    ("json_schema_validate", {"data": [""] * 20_000, "schema": {"items": {"pattern": "a" * 20_000}}}),
])
@pytest.mark.usefixtures("traced")
async def test_an_output_that_would_outgrow_the_cap_is_refused_before_it_is_built(
        engine: Engine, stage: str, value: Any) -> None:
    peak, res = await peak_while(lambda: engine.run(one(stage), value, RunOptions()))
    assert res.status == "failed" and res.error is not None, res.status
    assert res.error["code"] == "value_too_large", res.error
    assert "limit on a value" in res.error["message"] and stage in res.error["message"], res.error
    assert peak < 64 * MB, f"{stage} held {peak // MB} MB to find out"


async def test_under_the_cap_those_stages_still_work(engine: Engine) -> None:
    cases = [
        (one("text_join"), {"items": ["a", "b", "c"], "delimiter": ", "}, "a, b, c"),
        (one("text_replace"), {"text": "a-b-c", "from": "-", "to": "--"}, "a--b--c"),
        (one("text_template"), {"template": "{{a}} {{b}} {{a}} {{c}}", "variables": {"a": 1, "b": "x"}},
         "1 x 1 {{c}}"),
        (one("regex_replace"), {"text": "a1b22", "pattern": "(\\d+)", "replacement": "<$1>"}, "a<1>b<22>"),
        (one("csv_write"), {"records": [{"a": "1"}, {"b": "2"}]}, "a,b\n1,\n,2"),
    ]
    for g, value, expected in cases:
        res = await engine.run(g, value, RunOptions())
        assert res.status == "ok" and res.output == expected, (value, res.error)
    schema = {"data": [{"a": 1, "b": "x"}, {"a": "no"}],
              "schema": {"type": "array", "items": {"properties": {"b": {"enum": ["x"]}, "a": {"type": "number"}},
                                                    "required": ["b"]}}}
    res = await engine.run(one("json_schema_validate"), schema, RunOptions())
    assert res.output == {"valid": False, "errors": ["$[1]: missing required property 'b'",
                                                     "$[1].a: expected number, got string"]}, res.output


async def test_a_csv_of_many_columns_is_written_off_the_loop_and_within_the_cap() -> None:
    records = [{f"c{i}": ""} for i in range(2_000)]  # 4 million cells from 20 KB of input
    engine = Engine(EngineSettings())
    stall, res = await loop_stall_while(lambda: engine.run(one("csv_write"), {"records": records}, RunOptions()))
    assert res.status == "ok" and res.output.count("\n") == 2_000, res.error
    assert stall < 0.5, f"the event loop stalled {stall:.2f} s (the cells were written on it)"
    small = Engine(EngineSettings(max_value_bytes=1 * MB))
    started = time.monotonic()
    res = await small.run(one("csv_write"), {"records": records}, RunOptions())
    assert res.error is not None and res.error["code"] == "value_too_large", res.error
    assert time.monotonic() - started < 2, "refused before the cells were written"


async def test_a_schema_used_for_every_item_is_worked_out_once(engine: Engine) -> None:
    # 10,000 records against a schema of 10,000 properties, and 5,000 items against an enum of
    # 5,000 values: 10^8 and 2.5 * 10^7 steps when redone for every item, well past a 3 s budget.
    wide = {"data": [{}] * 10_000,
            "schema": {"items": {"properties": {f"p{i}": {"type": "string"} for i in range(10_000)}}}}
    enum = {"data": list(range(5_000)), "schema": {"items": {"enum": list(range(5_000))}}}
    for value in (wide, enum):
        res = await engine.run(one("json_schema_validate"), value, RunOptions(timeout_secs=3))
        assert res.status == "ok" and res.output == {"valid": True, "errors": []}, res.error


@pytest.mark.usefixtures("traced")
async def test_a_regex_that_compiles_to_gigabytes_is_refused_before_it_is_compiled(engine: Engine) -> None:
    # In verbose mode a blank or a comment between a group and its count hides nothing.
    for pattern in ("(?:a{1000}){2000}", "x{1000000}", "(?:(?:ab){100}){100}{100}", "(?x)(?:a{1000}) {2000}",
                    "(?x)(?:a{1000})# a comment\n{2000}", "(?:a{1000})(?#a comment){2000}",
                    "(?x)(?:(?-x:( {1000}))) {2000}"):
        started = time.monotonic()
        peak, res = await peak_while(lambda p=pattern: engine.run(  # type: ignore[misc]
            one("regex_match"), {"text": "aaa", "pattern": p}, RunOptions()))
        assert res.error is not None and res.error["code"] == "stage_failed", res.error
        assert "repeats too much" in res.error["message"], res.error
        assert peak < 32 * MB and time.monotonic() - started < 2, (pattern, peak // MB)
    res = await engine.run(one("regex_match"), {"text": "a", "pattern": "a" * 40_000}, RunOptions())
    assert res.error is not None and "at most 32768" in res.error["message"], res.error
    schema = {"data": "a", "schema": {"pattern": "(?:a{1000}){2000}"}}
    res = await engine.run(one("json_schema_validate"), schema, RunOptions())
    assert res.error is not None and "repeats too much" in res.error["message"], res.error
    # Patterns people write compile as before.
    res = await engine.run(one("regex_match"), {"text": "2024-01-31", "pattern": "^(\\d{4})-(\\d{2})-(\\d{2})$"},
                           RunOptions())
    assert res.output == {"full_match": "2024-01-31", "groups": ["2024", "01", "31"], "matched": True}


@pytest.mark.usefixtures("traced")
async def test_compiled_patterns_are_not_kept_past_a_few_small_ones(engine: Engine) -> None:
    # Ten distinct patterns just under the bound (~12 MB compiled each): kept, 120 MB.
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(10):
        res = await engine.run(one("regex_match"), {"text": "b", "pattern": f"a{{{90_000 + i}}}"}, RunOptions())
        assert res.output["matched"] is False, res.error
    gc.collect()
    kept = tracemalloc.get_traced_memory()[0] - before
    assert kept < 64 * MB, f"{kept // MB} MB of compiled patterns kept"
