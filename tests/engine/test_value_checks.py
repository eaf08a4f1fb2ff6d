"""Every value is a JSON value within the caps (security findings 4 and 9).

A run's input, every stage's input and output (sandboxed, in-process or
from the run's process host) and the run's output are checked where they
enter: too large (``value_too_large``), nested too deeply
(``value_too_deep``), numbers JSON cannot carry — NaN, infinities, integers
beyond a double (``non_finite_number``) — and text with lone surrogates
(``invalid_text``). None of them becomes ``null``, none is an
``internal_error``, and none stops the engine serving the next run.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from noether_nix.engine.engine import Engine, RunOptions, RunResult
from noether_nix.errors import NoetherError, http_status
from noether_nix.settings import EngineSettings
from tests.engine.conftest import AddStage, graph

# Writes its input text to stdout as it is, bypassing the wrapper's JSON encoder.
EMIT_RAW = ("import os\n"
            "def execute(text):\n"
            "    os.write(1, text.encode('utf-8', 'surrogatepass'))\n"
            "    os._exit(0)\n")

NON_JSON_OUTPUTS = [
    ("NaN", "non_finite_number"),
    ("Infinity", "non_finite_number"),
    ("-Infinity", "non_finite_number"),
    ("1e400", "non_finite_number"),
    ('{"a": [1, -1e999]}', "non_finite_number"),
    ("9" * 400, "non_finite_number"),  # an integer no double holds
    ('"\\ud800"', "invalid_text"),  # a lone surrogate
    ('{"k\\udfff": 1}', "invalid_text"),
    ("[" * 200 + "]" * 200, "value_too_deep"),
    ("9" * 5000, "stage_protocol_error"),  # no reader takes it
    ("[" * 100_000 + "]" * 100_000, "stage_protocol_error"),
    ("{not json", "stage_protocol_error"),
    ("1 2", "stage_protocol_error"),
]


def failed(res: RunResult, code: str) -> dict[str, Any]:
    assert res.status == "failed", res.output
    assert res.error is not None and res.error["code"] == code, res.error
    return res.error


@pytest.fixture
def emit_raw(add: AddStage) -> str:
    return add("emit_raw", EMIT_RAW, input="Text", output="Any").id


@pytest.mark.parametrize(("raw", "code"), NON_JSON_OUTPUTS, ids=[c[0][:12] for c in NON_JSON_OUTPUTS])
async def test_a_stage_output_json_cannot_carry_is_a_stage_error_with_a_code(engine: Engine, emit_raw: str,
                                                                             raw: str, code: str) -> None:
    res = await engine.run(graph({"op": "Stage", "id": emit_raw}), raw, RunOptions())
    err = failed(res, code)
    assert err["path"] == "root"
    entry = res.trace["stages"][-1]
    assert entry["status"]["Failed"]["code"] == code  # the trace says which stage, and why
    assert res.output is None


async def test_the_output_is_checked_inside_concurrent_graphs(engine: Engine, emit_raw: str) -> None:
    fine = {"op": "Stage", "id": "text_upper"}
    bad = {"op": "Sequential", "stages": [{"op": "Const", "value": "NaN"}, {"op": "Stage", "id": emit_raw}]}
    parallel = {"op": "Parallel", "branches": {"fine": fine, "bad": bad}}
    failed(await engine.run(graph(parallel), "x", RunOptions()), "non_finite_number")
    fanout = {"op": "Fanout", "source": {"op": "Const", "value": "1e400"}, "targets": [
        {"op": "Stage", "id": emit_raw}, {"op": "Stage", "id": "text_upper"}]}
    failed(await engine.run(graph(fanout), None, RunOptions()), "non_finite_number")
    mapped = await engine.run(graph({"op": "Stage", "id": "map"}),
                              {"items": ["1", "2", '"\\udc00"'], "stage_id": emit_raw}, RunOptions())
    err = failed(mapped, "invalid_text")
    assert err["path"] == "root.items[2]"
    ok = await engine.run(graph({"op": "Stage", "id": "map"}), {"items": ["1", "[2.5]"], "stage_id": emit_raw},
                          RunOptions())
    assert ok.status == "ok" and ok.output == [1, [2.5]]


async def test_an_in_process_stage_output_is_checked_too(engine: Engine) -> None:
    # parse_json reads "\ud800" as a lone surrogate: refused, not an internal error when hashed.
    res = await engine.run(graph({"op": "Stage", "id": "parse_json"}), '"\\ud800"', RunOptions())
    failed(res, "invalid_text")
    assert (await engine.run(graph({"op": "Stage", "id": "text_upper"}), "next", RunOptions())).output == "NEXT"


@pytest.mark.parametrize(("value", "code"), [
    (math.nan, "non_finite_number"),
    ([1.0, math.inf], "non_finite_number"),
    (10**400, "non_finite_number"),
    ({"t": "\udc80"}, "invalid_text"),
    ("x" * 5000, "value_too_large"),
])
async def test_a_run_input_json_cannot_carry_is_refused_before_the_run(value: Any, code: str) -> None:
    engine = Engine(EngineSettings(max_value_bytes=4096))
    with pytest.raises(NoetherError) as refused:
        await engine.run(graph({"op": "Stage", "id": "identity"}), value, RunOptions())
    assert refused.value.code == code and refused.value.path == "input"
    assert 400 <= http_status(refused.value) < 500
    assert engine.runs.recent() == []  # nothing ran, nothing was stored


@pytest.mark.parametrize("value", [10**400, -(10**400), math.nan, "\udc80", {"\ud800": 1}])
def test_a_graph_constant_json_cannot_carry_is_an_input_error(engine: Engine, value: Any) -> None:
    with pytest.raises(NoetherError) as refused:
        engine.check(graph({"op": "Const", "value": [value]}), None, RunOptions())
    assert refused.value.code in ("non_finite_number", "invalid_text") and refused.value.path == "root.value"
    assert http_status(refused.value) == 400


async def test_what_let_and_fanout_put_together_is_capped_at_the_root() -> None:
    # Each stage output is under the cap; the run's output built from them is not.
    engine = Engine(EngineSettings(max_value_bytes=64 << 10))
    text = "x" * (24 << 10)
    let = {"op": "Let", "bindings": {k: {"op": "Stage", "id": "text_upper"} for k in ("a", "b", "c")},
           "body": {"op": "Stage", "id": "identity"}}
    err = failed(await engine.run(graph(let), text, RunOptions(optimize=False)), "value_too_large")
    assert "the input of stage identity" in err["message"]
    fanout = {"op": "Fanout", "source": {"op": "Stage", "id": "identity"},
              "targets": [{"op": "Stage", "id": "text_upper"}] * 3}
    res = await engine.run(graph(fanout), text, RunOptions(optimize=False))
    err = failed(res, "value_too_large")
    assert "the run's output" in err["message"] and err["path"] == "root"
    assert res.output is None  # the refused value is not handed on
    stored = engine.runs.get(engine.runs.recent(1)[0]["run_id"])
    assert stored is not None and stored["status"] == "failed"
    assert stored["events"][-1]["event"] == "run_finished" and stored["events"][-1]["output"] is None


async def test_a_large_text_shared_by_many_branches_is_hashed_right_and_still_refused_when_too_large(
        engine: Engine) -> None:
    """A large text handed to many branches is checked and hashed once per run
    (``Interpreter.known_values``); every trace entry still carries its true hash, a
    different text of the same length its own, and the caps still hold."""
    from noether_nix.model.jcs import value_hash

    big, other = "a" * (200 * 1024), "b" * (200 * 1024)
    branches = {f"b{i}": {"op": "Stage", "id": "identity"} for i in range(12)}
    branches["len"] = {"op": "Stage", "id": "text_length"}
    res = await engine.run(graph({"op": "Parallel", "branches": branches}), big, RunOptions())
    assert res.status == "ok", res.error
    assert res.output["len"] == len(big) and all(res.output[f"b{i}"] is big or res.output[f"b{i}"] == big
                                                 for i in range(12))
    pairs = [(e["input_hash"], e["output_hash"]) for e in res.trace["stages"]]
    assert len(pairs) == 13 and pairs.count((value_hash(big), value_hash(big))) == 12, pairs
    again = await engine.run(graph({"op": "Stage", "id": "identity"}), other, RunOptions())
    assert again.trace["stages"][0]["input_hash"] == value_hash(other) != value_hash(big)
    # 13 branches of 200 KiB make a 2.6 MB record: over a 1 MiB cap, refused as before.
    capped = Engine(EngineSettings(max_value_bytes=1 << 20), store=engine.store)
    failed(await capped.run(graph({"op": "Parallel", "branches": branches}), big, RunOptions()), "value_too_large")


async def test_a_run_does_not_keep_the_large_texts_it_has_passed_on() -> None:
    """The texts a run remembers as checked (``Interpreter.known_values``) are kept alive by
    it: a chain of stages each making a new large text must not hold them all until the
    run ends (the last 16 were kept: with 32 MiB values, 512 MiB per run)."""
    import tracemalloc

    n = 1 << 20
    engine = Engine(EngineSettings(max_value_bytes=4 * n, pure_cache=False))
    # Retry around each stage: not one fast-path run of pure stages (those keep nothing).
    stages = [{"op": "Retry", "max_attempts": 1, "stage": {"op": "Stage", "id": ("text_upper", "text_lower")[i % 2]}}
              for i in range(24)]
    g = graph({"op": "Sequential", "stages": stages})
    warm = await engine.run(g, "warm up", RunOptions(optimize=False))
    assert warm.status == "ok", warm.error
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        res = await engine.run(g, "a" * n, RunOptions(optimize=False))
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert res.status == "ok" and res.output == "a" * n, res.error
    # Live at once: the input and output of a stage, their encodings for the hash, the run's
    # output kept for the store: some 5 texts. Every text of the chain kept: 20 and more.
    assert peak < 10 * n, f"{peak / n:.1f} texts' worth of memory at the peak"


@pytest.mark.parametrize("shape", ["list", "record"])
async def test_a_large_list_or_record_shared_by_many_branches_is_hashed_right(engine: Engine, shape: str) -> None:
    """Lists and records handed to many branches are remembered as checked too (by
    identity: no stage changes its input in place). 200 branches over an 8 MiB list
    took 17.7 s before; here every branch's hashes are still the true ones, and the cap
    holds."""
    from noether_nix.model.jcs import value_hash

    rows = [f"row {i:06d} " + "x" * 40 for i in range(4000)]  # ~200 KiB
    value: Any = rows if shape == "list" else {f"k{i:05d}": r for i, r in enumerate(rows)}
    branches = {f"b{i}": {"op": "Stage", "id": "identity"} for i in range(12)}
    res = await engine.run(graph({"op": "Parallel", "branches": branches}), value, RunOptions())
    assert res.status == "ok", res.error
    assert all(res.output[f"b{i}"] == value for i in range(12))
    pairs = [(e["input_hash"], e["output_hash"]) for e in res.trace["stages"]]
    assert pairs == [(value_hash(value), value_hash(value))] * 12
    capped = Engine(EngineSettings(max_value_bytes=1 << 20), store=engine.store)
    failed(await capped.run(graph({"op": "Parallel", "branches": branches}), value, RunOptions()),
           "value_too_large")


async def test_a_run_does_not_keep_a_large_list_it_has_passed_on() -> None:
    """A list or record the run remembers as checked counts its memory, not its JSON: a
    list of empty lists takes 21 times its encoding. Parsed from 512 KiB of JSON and passed
    on, it was kept (11 MiB) until the run ended, under a cap that was to hold one value's
    worth (2 MiB)."""
    import tracemalloc

    from noether_nix.engine.events import StageStarted

    n = 1 << 19
    engine = Engine(EngineSettings(max_value_bytes=4 * n, pure_cache=False))
    stages = [{"op": "Retry", "max_attempts": 1, "stage": {"op": "Stage", "id": s}}
              for s in ("parse_json", "list_length", "to_text", "text_length")]
    g = graph({"op": "Sequential", "stages": stages})
    text = "[" + "[]," * (n // 3) + "[]]"
    warm = await engine.run(g, "[1]", RunOptions(optimize=False))
    assert warm.status == "ok", warm.error
    held: dict[str, int] = {}

    async def emit(ev: Any) -> None:
        if isinstance(ev, StageStarted):
            held[ev.node_path] = tracemalloc.get_traced_memory()[0]

    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        res = await engine.run(g, text, RunOptions(optimize=False), emit=emit)
    finally:
        tracemalloc.stop()
    assert res.status == "ok", res.error
    # While list_length runs its input is alive (some 11 MiB); two stages on, nothing of it.
    assert held["root.stages[1].stage"] - base > 10 * n
    kept = held["root.stages[3].stage"] - base
    assert kept < n, f"{kept / (1 << 20):.1f} MiB still held once the list was passed on"


@pytest.mark.parametrize("trace", ["summary", "full"])
async def test_every_hash_a_run_reuses_is_its_value_s_hash_when_reused(engine: Engine, monkeypatch: pytest.MonkeyPatch,
                                                                       trace: str) -> None:
    """A value checked and hashed once is taken as checked by identity afterwards
    (``Passed``, ``Interpreter.known_values``): sound only while nothing changes it in
    place. One large record through every operator and the stages that take lists and
    records apart (and put them together), each stage's input and output hash compared
    with the value as it is when the stage gets it: a stage or operator that changed a
    checked value would show as a stale hash (and a wrong pure-cache key)."""
    from noether_nix.engine.interpreter import Interpreter
    from noether_nix.model.jcs import value_hash

    stale: list[str] = []
    accept_input, accept_output = Interpreter._accept_input, Interpreter._accept_output

    def checked(accept: Any) -> Any:
        def wrapper(self: Interpreter, stage: Any, value: Any, path: str, **kw: Any) -> str:
            true = value_hash(value)
            got: str = accept(self, stage, value, path, **kw)
            if got != true or value_hash(value) != true:
                stale.append(f"{stage.name} at {path}")
            return got
        return wrapper

    monkeypatch.setattr(Interpreter, "_accept_input", checked(accept_input))
    monkeypatch.setattr(Interpreter, "_accept_output", checked(accept_output))
    items = [{"type": "ab"[i % 2], "v": i, "pad": "x" * 40} for i in range(1500)]
    value = {"items": items, "key": "type", "descending": None, "count": 3, "stage_id": "identity",
             "left": items, "right": [r["pad"] for r in items], "base": {f"k{i}": r for i, r in enumerate(items)},
             "patch": {"k1": {"v": 0}, "new": items[:5]}, "data": {"a": items}, "path": "$.a"}

    def s(name: str) -> dict[str, Any]:
        return {"op": "Stage", "id": name}

    targets = [
        s("sort"), s("group_by"), s("zip"), s("json_merge"), s("take"), s("json_path"), s("map"),
        {"op": "Retry", "max_attempts": 2, "stage": s("identity")},
        {"op": "Let", "bindings": {"x": s("identity"), "y": s("json_merge")},
         "body": {"op": "Sequential", "stages": [s("identity"), s("identity")]}},
        {"op": "Parallel", "branches": {"items": {"op": "Sequential", "stages": [s("list_dedup"), s("identity")]},
                                        "left": s("head"), "base": s("identity")}},
        {"op": "Merge", "sources": [s("identity"), s("identity")], "target": s("identity")},
        {"op": "Fanout", "source": s("identity"), "targets": [s("identity"), s("identity")]},
    ]
    # Branch names the value has not: every branch gets the whole value.
    root = {"op": "Parallel", "branches": {f"t{i:02d}": t for i, t in enumerate(targets)}}
    res = await engine.run(graph(root), value, RunOptions(trace=trace, cache=False))
    assert res.status == "ok", res.error
    assert not stale, stale
    assert len(res.trace["stages"]) > 20
