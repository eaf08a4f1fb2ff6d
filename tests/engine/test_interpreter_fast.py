"""The interpreter, budget, retries and higher-order stages, against the in-memory executor.

The fast tier (``./dev test --fast``): no Nix build, no sandbox, so these run
in milliseconds; the same behaviour through real sandboxes is covered by the
other engine tests.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import trio

from noether_nix.engine.engine import Engine
from noether_nix.engine.events import Event, RunFinished, StageFinished, StageStarted
from noether_nix.engine.options import RunOptions
from noether_nix.model.signing import load_or_create_author_key, public_key_hex, sign_id
from noether_nix.model.stage import Stage, stage_from_spec
from noether_nix.paths import noether_home
from noether_nix.settings import EngineSettings
from tests.fakes import InMemoryExecutor

SLOW_ECHO = "import trio\nasync def execute(x):\n    await trio.sleep(0.2)\n    return x\n"
FAIL = "def execute(x):\n    raise ValueError('no: %r' % (x,))\n"


@pytest.fixture
def executor() -> InMemoryExecutor:
    return InMemoryExecutor()


@pytest.fixture
def engine(executor: InMemoryExecutor) -> Engine:
    return Engine(EngineSettings(run_concurrency=4), executor=executor)


def add(engine: Engine, name: str, code: str, *, effects: list[Any] | None = None, input: Any = "Any",
        output: Any = "Any") -> Stage:
    stage = stage_from_spec({"name": name, "input": input, "output": output, "effects": effects or [],
                             "implementation": code})
    key = load_or_create_author_key(noether_home())
    stage = msgspec.structs.replace(stage, ed25519_signature=sign_id(key, stage.id),
                                    signer_public_key=public_key_hex(key))
    engine.store.add(stage, activate=True)
    return stage


def graph(root: Any) -> dict[str, Any]:
    return {"description": "fast", "version": "1", "root": root}


def stage(ref: str, **config: Any) -> dict[str, Any]:
    return {"op": "Stage", "id": ref, **({"config": config} if config else {})}


OPTS = RunOptions(isolate="none", cache=False)


async def test_parallel_branches_run_at_once_up_to_the_run_limit(engine: Engine, executor: InMemoryExecutor) -> None:
    add(engine, "slow_echo", SLOW_ECHO)
    started = trio.current_time()
    res = await engine.run(graph({"op": "Parallel", "branches": {f"b{i}": stage("slow_echo") for i in range(8)}}),
                           "x", OPTS)
    assert res.status == "ok" and res.output == {f"b{i}": "x" for i in range(8)}
    assert executor.peak == 4  # run_concurrency: never more, and the limit is reached
    assert trio.current_time() - started < 8 * 0.2  # concurrently, not one after another


async def test_concurrent_branches_cannot_overshoot_the_budget(engine: Engine, executor: InMemoryExecutor) -> None:
    # Three concurrent retries of a paid, failing stage: the static figure (12¢) fits, the
    # attempts would not; each one is reserved before it starts, so none overshoots.
    add(engine, "paid_fail", "import trio\nasync def execute(x):\n    await trio.sleep(0.05)\n    raise RuntimeError('no')\n",
        effects=["Fallible", {"effect": "Cost", "cents": 4}])
    retry = {"op": "Retry", "stage": stage("paid_fail"), "max_attempts": 5}
    res = await engine.run(graph({"op": "Parallel", "branches": {k: retry for k in "abc"}}), None,
                           msgspec.structs.replace(OPTS, budget_cents=12, optimize=False))
    assert res.status == "failed" and res.error is not None and res.error["code"] == "budget_exceeded"
    assert res.spent_cents <= 12 and len(executor.calls) * 4 <= 12


async def test_the_first_failure_cancels_its_siblings(engine: Engine, executor: InMemoryExecutor) -> None:
    add(engine, "slow_echo", "import trio\nasync def execute(x):\n    await trio.sleep(30)\n    return x\n")
    add(engine, "fail", FAIL)
    with trio.fail_after(10):  # the slow sibling is cancelled, not waited for
        res = await engine.run(graph({"op": "Parallel", "branches": {"slow": stage("slow_echo"),
                                                                     "bad": stage("fail")}}), 1, OPTS)
    assert res.status == "failed" and res.error is not None
    assert res.error["code"] == "stage_error" and res.error["path"] == "root.branches.bad"


async def test_retry_numbers_attempts_and_gives_up_with_the_last_error(engine: Engine) -> None:
    add(engine, "fail", FAIL)
    events: list[Event] = []

    async def keep(ev: Event) -> None:
        events.append(ev)

    res = await engine.run(graph({"op": "Retry", "stage": stage("fail"), "max_attempts": 3, "delay_ms": 1}), 7,
                           OPTS, emit=keep)
    assert res.status == "failed" and res.error is not None and res.error["code"] == "retry_exhausted"
    assert "no: 7" in res.error["details"]["last_error"]["message"]
    assert [e.attempt for e in events if isinstance(e, StageStarted)] == [1, 2, 3]
    assert [s["attempt"] for s in res.trace["stages"]] == [1, 2, 3]


async def test_a_refusal_by_the_run_s_own_rules_is_not_retried(engine: Engine, executor: InMemoryExecutor) -> None:
    add(engine, "paid_fail", FAIL, effects=["Fallible", {"effect": "Cost", "cents": 5}])
    g = graph({"op": "Retry", "stage": stage("paid_fail"), "max_attempts": 5})
    res = await engine.run(g, "x", msgspec.structs.replace(OPTS, budget_cents=9, optimize=False))
    assert res.error is not None and res.error["code"] == "budget_exceeded"
    assert len(executor.calls) == 1  # the second attempt was refused by the budget, and that is final


async def test_let_fanout_and_merge_feed_their_parts(engine: Engine) -> None:
    add(engine, "upper", "def execute(x):\n    return x.upper()\n", input="Text", output="Text")
    res = await engine.run(graph({"op": "Let", "bindings": {"u": stage("upper"), "n": stage("text_length")},
                                  "body": {"op": "Parallel", "branches": {"u": stage("text_length"),
                                                                          "n": stage("to_text")}}}), "abc", OPTS)
    assert res.output == {"n": "3.0", "u": 3.0}  # upstream's numbers are floats
    res = await engine.run(graph({"op": "Fanout", "source": stage("upper"),
                                  "targets": [stage("text_length"), stage("upper")]}), "ab", OPTS)
    assert res.output == [2, "AB"]


async def test_map_runs_calls_concurrently_and_keeps_their_order(engine: Engine, executor: InMemoryExecutor) -> None:
    add(engine, "slow_echo", SLOW_ECHO)
    items = list(range(10))
    res = await engine.run(graph(stage("map", stage_id="slow_echo")), items, OPTS)
    assert res.output == items
    assert executor.peak == 4
    assert [s["node_path"] for s in res.trace["stages"] if s["name"] == "slow_echo"] \
        == sorted(f"root.items[{i}]" for i in items) or len(res.trace["stages"]) == 11


async def test_higher_order_stages_fail_with_codes(engine: Engine) -> None:
    add(engine, "fail", FAIL)
    add(engine, "sometimes", "def execute(x):\n    return 'yes' if x else 'no'\n")
    res = await engine.run(graph(stage("filter", stage_id="sometimes")), [1, 0], OPTS)
    assert res.error is not None and "not a boolean" in res.error["message"]
    res = await engine.run(graph(stage("fallback")), {"stages": ["fail", "text_upper"], "input": "hi"}, OPTS)
    assert res.output == "HI"
    res = await engine.run(graph(stage("fallback")), {"stages": ["fail", "fail"], "input": "hi"}, OPTS)
    assert res.error is not None and res.error["code"] == "all_failed"
    res = await engine.run(graph(stage("reduce")), {"items": [1, 2, 3], "stage_id": "fail", "initial": 0}, OPTS)
    assert res.error is not None and "no: {'accumulator': 0, 'item': 1}" in res.error["message"]


async def test_timeout_and_race_stop_the_losers(engine: Engine, executor: InMemoryExecutor) -> None:
    add(engine, "forever", "import trio\nasync def execute(x):\n    await trio.sleep(60)\n    return x\n")
    with trio.fail_after(10):
        res = await engine.run(graph(stage("timeout")), {"stage_id": "forever", "input": 1, "timeout_ms": 100}, OPTS)
    assert res.error is not None and res.error["code"] == "stage_timed_out"
    with trio.fail_after(10):
        res = await engine.run(graph(stage("race")), {"stages": ["forever", "text_upper"], "input": "go"}, OPTS)
    assert res.output == "GO"
    assert executor.running == 0  # the loser was cancelled, not left running


async def test_the_last_event_is_the_result_also_when_cancelled(engine: Engine) -> None:
    add(engine, "forever", "import trio\nasync def execute(x):\n    await trio.sleep(60)\n    return x\n")
    events: list[Event] = []

    async def keep(ev: Event) -> None:
        events.append(ev)

    res = await engine.run(graph(stage("text_upper")), "a", OPTS, emit=keep)
    assert events[-1] == res and isinstance(res, RunFinished) and res.output == "A"
    events.clear()
    with trio.move_on_after(0.5):
        await engine.run(graph(stage("forever")), 1, OPTS, emit=keep)
    last = events[-1]
    assert isinstance(last, RunFinished) and last.status == "cancelled"
    assert engine.runs.get(last.run_id)["status"] == "cancelled"  # type: ignore[index]


async def test_stage_events_pair_up(engine: Engine) -> None:
    add(engine, "slow_echo", SLOW_ECHO)
    events: list[Event] = []

    async def keep(ev: Event) -> None:
        events.append(ev)

    await engine.run(graph({"op": "Parallel", "branches": {"a": stage("slow_echo"), "b": stage("text_upper")}}),
                     "z", OPTS, emit=keep)
    started = sorted(e.node_path for e in events if isinstance(e, StageStarted))
    finished = sorted(e.node_path for e in events if isinstance(e, StageFinished))
    assert started == finished == ["root.branches.a", "root.branches.b"]


# ------------------------------------------------------------ the fast Pure path (engine.fastpath)


def summaries(res: RunFinished) -> list[dict[str, Any]]:
    return [e for e in res.trace["stages"] if "summary" in e]


async def test_pure_stdlib_calls_in_map_filter_reduce_are_one_summary_entry(engine: Engine) -> None:
    events: list[Event] = []

    async def emit(ev: Event) -> None:
        events.append(ev)

    items = [f"w{i}" for i in range(3000)]
    res = await engine.run(graph(stage("map", stage_id="text_upper")), items, OPTS, emit=emit)
    assert res.output == [i.upper() for i in items]
    (entry,) = summaries(res)
    assert entry["node_path"] == "root.items[*]" and entry["name"] == "text_upper" and entry["status"] == "Ok"
    summary = entry["summary"]
    assert summary["calls"] == 3000 and summary["failures"] == 0 and summary["first_error"] is None
    assert summary["histogram"]["sampled"] == sum(summary["histogram"]["counts"]) > 0
    assert len(res.trace["stages"]) == 2  # map's own entry and the summary
    assert not [e for e in events if isinstance(e, StageStarted) and e.name == "text_upper"]  # no per-call events
    full = RunOptions(isolate="none", cache=False, trace="full")
    res = await engine.run(graph(stage("filter", stage_id="to_bool")), [0, 1, "yes", 0, 2], OPTS)
    traced = await engine.run(graph(stage("filter", stage_id="to_bool")), [0, 1, "yes", 0, 2], full)
    assert res.status == "ok" and res.output == traced.output and len(res.output) >= 2
    assert summaries(res)[0]["summary"]["calls"] == 5 and summaries(traced) == []
    # to_text as a reducer: the accumulator is the text of the previous step's record.
    res = await engine.run(graph(stage("reduce", stage_id="to_text", initial="")), [1, 2, 3], OPTS)
    traced = await engine.run(graph(stage("reduce", stage_id="to_text", initial="")), [1, 2, 3], full)
    assert res.status == "ok" and res.output == traced.output and '"item":3' in res.output
    assert summaries(res)[0]["summary"]["calls"] == 3 and len(traced.trace["stages"]) == 4


async def test_text_stages_mapped_at_c_speed_give_what_each_call_gives(engine: Engine) -> None:
    """Past each chunk's timed calls, text_upper and text_lower run as the str method itself."""
    items = [f"Straße-{i}-ǅ-ΣΑΣ" for i in range(2100)]
    full = RunOptions(isolate="none", cache=False, trace="full")
    for name in ("text_upper", "text_lower"):
        fast = await engine.run(graph(stage("map", stage_id=name)), items, OPTS)
        traced = await engine.run(graph(stage("map", stage_id=name)), items, full)
        assert fast.status == traced.status == "ok" and fast.output == traced.output
        assert fast.output[-1] == (items[-1].upper() if name == "text_upper" else items[-1].lower())
        assert summaries(fast)[0]["summary"]["calls"] == 2100


async def test_the_fast_path_fails_as_the_traced_path_does(engine: Engine) -> None:
    """The same error code, message and node path, and the summary counts the failure."""
    bad = ["a", "b", 3, "d"]
    fast = await engine.run(graph(stage("map", stage_id="text_upper")), bad, OPTS)
    full = await engine.run(graph(stage("map", stage_id="text_upper")), bad, RunOptions(isolate="none", cache=False,
                                                                                            trace="full"))
    assert fast.status == full.status == "failed"
    assert fast.error == full.error and fast.error is not None
    assert fast.error["code"] == "stage_input_mismatch" and fast.error["path"] == "root.items[2]"
    (entry,) = summaries(fast)
    assert entry["summary"]["failures"] == 1 and entry["summary"]["first_error"]["path"] == "root.items[2]"
    # A failure inside the implementation: stage_failed at the item that failed.
    fast = await engine.run(graph(stage("map", stage_id="to_number")), ["1", "2", "x", "4"], OPTS)
    full = await engine.run(graph(stage("map", stage_id="to_number")), ["1", "2", "x", "4"],
                            RunOptions(isolate="none", cache=False, trace="full"))
    assert fast.error == full.error and fast.error is not None and fast.error["path"] == "root.items[2]"


async def test_a_long_sequential_of_pure_stdlib_stages_is_summarised(engine: Engine) -> None:
    chain = [stage("text_upper"), stage("text_lower")] * 20
    res = await engine.run(graph({"op": "Sequential", "stages": chain}), "MiXeD", OPTS)
    assert res.status == "ok" and res.output == "mixed"
    (entry,) = summaries(res)
    assert entry["node_path"] == "root.stages[0..39]" and entry["summary"]["calls"] == 40
    short = await engine.run(graph({"op": "Sequential", "stages": chain[:4]}), "MiXeD", OPTS)
    assert summaries(short) == [] and len(short.trace["stages"]) == 4  # a short one is traced stage by stage
    full = await engine.run(graph({"op": "Sequential", "stages": chain}), "MiXeD",
                            RunOptions(isolate="none", cache=False, trace="full"))
    assert full.output == "mixed" and len(full.trace["stages"]) == 40


async def test_the_fast_path_keeps_the_value_size_limit(engine: Engine) -> None:
    small = Engine(EngineSettings(max_value_bytes=64 * 1024), store=engine.store, executor=InMemoryExecutor())
    items = ["x" * 100] * 500  # 51 KB in, and upper-cased the same size: fits
    assert (await small.run(graph(stage("map", stage_id="text_upper")), items, OPTS)).status == "ok"
    items = ["\u0390" * 100] * 150  # 30 KB in; each character upper-cases to three (6 bytes): 90 KB out
    res = await small.run(graph(stage("map", stage_id="text_upper")), items, OPTS)
    assert res.status == "failed" and res.error is not None and res.error["code"] == "value_too_large"


@pytest.mark.parametrize("chunk", [["a", "é" * 40_000], ["x"] * 1024, ["x" * 43_000], ["x" * 44_000], ["a", 1, "b"],
                                   [1, 2.5, None], [], ["a", ["nested"]], [{"k": "v"}] * 3])
def test_one_pass_over_a_chunk_answers_what_the_two_did(chunk: list[Any]) -> None:
    """``scan_chunk``: the input type check and the inline-or-thread decision of a
    fast-path chunk, one join for a text stage, the same answers as the two passes."""
    from noether_nix.engine.fastpath import all_of, chunk_is_small, scan_chunk, simple_types
    from noether_nix.model.types import AnyType, NumberType, TextType

    for t in (TextType(), NumberType(), AnyType()):
        types = simple_types(t)
        assert scan_chunk(chunk, types) == (all_of(chunk, types), chunk_is_small(chunk))


async def test_a_cancelled_map_stops_inside_its_loop(engine: Engine) -> None:
    """The fast path checkpoints between chunks (each ``CHECKPOINT_S`` of work and after the
    last): a run cancelled as its map starts stops there, not after every item."""
    from noether_nix.engine.events import StageProgress

    items = ["x"] * 500_000
    events: list[Event] = []
    with trio.CancelScope() as scope:

        async def cancel_at_start(ev: Event) -> None:
            events.append(ev)
            if isinstance(ev, StageProgress) and ev.done == 0:
                scope.cancel()  # delivered at the map loop's next checkpoint

        await engine.run(graph(stage("map", stage_id="text_upper")), items, OPTS, emit=cancel_at_start)
    last = events[-1]
    assert isinstance(last, RunFinished) and last.status == "cancelled"
    (entry,) = summaries(last)
    assert 0 < entry["summary"]["calls"] < len(items), entry["summary"]
