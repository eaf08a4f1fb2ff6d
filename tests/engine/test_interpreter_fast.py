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
