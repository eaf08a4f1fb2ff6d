"""Stdlib stages through the engine: each runs where its category says
(in-process, in a sandbox with the walls its input is granted, or through
the engine for higher-order stages), never from an example's output."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from noether_nix.engine.engine import Engine, RunOptions, RunResult
from noether_nix.engine.events import Event, StageFinished, StageOutput
from noether_nix.errors import NoetherError
from tests.engine.conftest import AddStage, graph
from tests.fake_http import QuietHandler, served
from tests.processes import own_sandbox_cgroups, own_sandbox_pids, running
from tests.sandbox_access import share_with_sandbox


def stage(name: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    node: dict[str, Any] = {"op": "Stage", "id": name}
    if config:
        node["config"] = config
    return node


async def run(engine: Engine, name: str, value: Any, **opts: Any) -> RunResult:
    return await engine.run(graph(stage(name)), value, RunOptions(**opts))


def ok(res: RunResult) -> Any:
    assert res.status == "ok", res.error
    return res.output


def failed(res: RunResult, code: str) -> dict[str, Any]:
    assert res.status == "failed", res.output
    assert res.error is not None
    assert res.error["code"] == code, res.error
    return res.error


# ------------------------------------------------------------ higher-order


async def test_map_runs_the_named_stage_on_every_item_and_traces_each(engine: Engine) -> None:
    # A Pure stdlib stage's calls are one summary entry; every call is traced on request.
    res = await run(engine, "map", {"items": ["a", "bc"], "stage_id": "text_upper"})
    assert ok(res) == ["A", "BC"]
    (inner,) = [e for e in res.trace["stages"] if e["name"] == "text_upper"]
    assert inner["node_path"] == "root.items[*]" and inner["summary"]["calls"] == 2
    res = await run(engine, "map", {"items": ["a", "bc"], "stage_id": "text_upper"}, trace="full")
    assert ok(res) == ["A", "BC"]
    inner = [e for e in res.trace["stages"] if e["name"] == "text_upper"]
    assert [e["node_path"] for e in inner] == ["root.items[0]", "root.items[1]"]


async def test_filter_and_reduce_run_sandboxed_user_stages(engine: Engine, add: AddStage) -> None:
    add("is_even", "def execute(x):\n    return x % 2 == 0\n", input="Number", output="Bool")
    add("add_up", "def execute(r):\n    return r['accumulator'] + r['item']\n", output="Number")
    assert ok(await run(engine, "filter", {"items": [1, 2, 3, 4], "stage_id": "is_even"})) == [2, 4]
    res = await run(engine, "reduce", {"items": [1, 2, 3], "stage_id": "add_up", "initial": 10})
    assert ok(res) == 16
    assert {e["isolation"] for e in res.trace["stages"] if e["name"] == "add_up"} == {"bwrap"}


async def test_map_refuses_an_item_of_the_wrong_type_naming_it(engine: Engine) -> None:
    err = failed(await run(engine, "map", {"items": ["a", 3], "stage_id": "text_upper"}), "stage_input_mismatch")
    assert err["path"] == "root.items[1]"


async def test_inner_stages_pass_the_runs_policy(engine: Engine, add: AddStage) -> None:
    add("fetcher", "def execute(x):\n    return x\n", effects=[{"effect": "Network"}])
    res = await run(engine, "map", {"items": [1], "stage_id": "fetcher"}, allow_effects=["fallible"])
    assert "--allow-effects network" in failed(res, "effect_not_allowed")["message"]
    assert "no stage matches" in failed(await run(engine, "map", {"items": [1], "stage_id": "no_such_stage"}),
                                 "stage_not_found")["message"]


async def test_inner_stage_costs_are_charged_to_the_budget(engine: Engine, add: AddStage) -> None:
    add("paid", "def execute(x):\n    return x\n", effects=[{"effect": "Cost", "cents": 5}])
    res = await run(engine, "map", {"items": [1, 2, 3], "stage_id": "paid"}, budget_cents=12)
    failed(res, "budget_exceeded")
    assert res.spent_cents == 10


async def test_retry_fallback_parallel(engine: Engine, add: AddStage) -> None:
    add("boom", "def execute(x):\n    raise ValueError('no')\n")
    res = await run(engine, "retry", {"stage_id": "boom", "input": 1, "max_attempts": 3, "delay_ms": None})
    assert failed(res, "retry_exhausted")["message"].count("3 times") == 1
    assert len([e for e in res.trace["stages"] if e["name"] == "boom"]) == 3
    assert ok(await run(engine, "fallback", {"stages": ["boom", "text_upper"], "input": "x"})) == "X"
    failed(await run(engine, "fallback", {"stages": ["boom", "boom"], "input": "x"}), "all_failed")
    out = await run(engine, "parallel", {"stages": ["text_upper", "text_lower"], "inputs": ["a", "B"]})
    assert ok(out) == ["A", "b"]


async def test_timeout_and_race_stop_the_slow_sandbox(engine: Engine, add: AddStage) -> None:
    add("slow", "import time\ndef execute(x):\n    slept_for_the_test = time.sleep(60)\n    return x\n")
    await run(engine, "text_upper", "warm")
    started = time.monotonic()
    res = await run(engine, "timeout", {"stage_id": "slow", "input": 1, "timeout_ms": 1500})
    assert "1500 ms" in failed(res, "stage_timed_out")["message"]
    res = await run(engine, "race", {"stages": ["slow", "text_upper"], "input": "x"})
    assert ok(res) == "X"
    assert time.monotonic() - started < 30
    assert own_sandbox_cgroups() == {}  # the losers' sandboxes are gone, found by this test's own cgroups


# ------------------------------------------------------------ files


async def test_read_file_sees_only_what_the_run_grants(engine: Engine, shared_tmp: Path) -> None:
    tmp_path = shared_tmp  # root's sandboxes run as noether-sbx users: grant what they can reach
    granted = tmp_path / "granted"
    granted.mkdir()
    (granted / "a.txt").write_text("héllo")
    (tmp_path / "secret.txt").write_text("no")
    (granted / "escape").symlink_to(tmp_path / "secret.txt")
    out = ok(await run(engine, "read_file", {"path": str(granted / "a.txt")}, allow_read=[str(granted)]))
    assert out == {"content": "héllo", "size_bytes": 6}
    res = await run(engine, "read_file", {"path": str(tmp_path / "secret.txt")}, allow_read=[str(granted)])
    assert "--allow-read" in failed(res, "path_not_granted")["message"]
    # A symlink inside the grant cannot reach outside it: the sandbox has no such file.
    res = await run(engine, "read_file", {"path": str(granted / "escape")}, allow_read=[str(granted)])
    assert res.status == "failed" and res.error is not None and "no such file" in res.error["message"]
    failed(await run(engine, "read_file", {"path": str(granted / ".." / "secret.txt")}, allow_read=[str(granted)]),
           "path_not_granted")


async def test_write_file_writes_only_under_a_write_grant(engine: Engine, shared_tmp: Path) -> None:
    tmp_path = shared_tmp  # group noether-sbx may write here
    target = tmp_path / "out.txt"
    failed(await run(engine, "write_file", {"path": str(target), "content": "x"}, allow_read=[str(tmp_path)]),
           "path_not_granted")
    assert not target.exists()
    out = ok(await run(engine, "write_file", {"path": str(target), "content": "ünï"}, allow_write=[str(tmp_path)]))
    assert out == {"path": str(target), "bytes_written": 5}
    assert target.read_text() == "ünï"


# ------------------------------------------------------------ environment, streams


async def test_env_get_sees_the_runs_variables_and_none_of_the_daemons(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOETHER_TEST_SECRET", "daemon-only")
    monkeypatch.setenv("LANG", "C.UTF-8")
    assert ok(await run(engine, "env_get", {"name": "GREETING"}, env={"GREETING": "hi"})) == "hi"
    assert ok(await run(engine, "env_get", {"name": "NOETHER_TEST_SECRET"})) is None
    assert ok(await run(engine, "env_get", {"name": "LANG"})) is None


async def test_stdin_read_and_stdout_write_use_the_runs_streams(engine: Engine) -> None:
    assert ok(await run(engine, "stdin_read", None, stdin="line 1\nline 2")) == "line 1\nline 2"
    assert "--stdin" in failed(await run(engine, "stdin_read", None), "stage_failed")["message"]
    seen: list[Event] = []

    async def watch(ev: Event) -> None:
        seen.append(ev)

    res = await engine.run(graph(stage("stdout_write")), {"text": "printed"}, RunOptions(), emit=watch)
    assert ok(res) is None
    assert [e.text for e in seen if isinstance(e, StageOutput)] == ["printed"]


# ------------------------------------------------------------ sandboxed, network


class _Handler(QuietHandler):
    def do_GET(self) -> None:
        self.send_body(200, f"you asked for {self.path}".encode(), "text/plain")


@pytest.fixture
def http_url() -> Iterator[str]:
    with served(_Handler) as url:
        yield url


async def test_http_get_runs_in_a_networked_sandbox(engine: Engine, http_url: str) -> None:
    res = await run(engine, "http_get", {"url": f"{http_url}/x?y=1", "headers": None})
    out = ok(res)
    assert out["status"] == 200 and out["body"] == "you asked for /x?y=1"
    assert res.trace["stages"][0]["isolation"] == "bwrap"
    with pytest.raises(NoetherError) as refused:  # refused before the run starts
        await run(engine, "http_get", {"url": http_url, "headers": None}, allow_effects=["fallible"])
    assert refused.value.code == "effect_not_allowed"


async def test_text_hash_runs_in_a_sandbox(engine: Engine) -> None:
    res = await run(engine, "text_hash", {"text": "abc", "algorithm": None})
    assert ok(res)["hash"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert res.trace["stages"][0]["isolation"] == "bwrap"


# ------------------------------------------------------------ refused, store


async def test_stages_that_cannot_run_here_say_why(engine: Engine) -> None:
    err = failed(await run(engine, "llm_complete", {"prompt": "hi", "model": None, "system": None,
                                                   "max_tokens": None, "temperature": None}), "no_llm_provider")
    assert '"llm" entry in the daemon configuration' in err["message"]


async def test_store_add_adds_an_unsigned_draft_and_composition_verify_checks_edges(engine: Engine) -> None:
    spec = {"name": "twice", "input": "Number", "output": "Number",
            "implementation": {"language": "python", "code": "def execute(x):\n    return 2 * x\n"}}
    out = ok(await run(engine, "store_add", {"spec": spec}))
    assert out["lifecycle"] == "draft"
    added = engine.store.get(out["id"])
    assert added is not None and added.ed25519_signature is None
    good = ok(await run(engine, "composition_verify", {"stages": ["text_upper", "text_length"],
                                                       "operators": ["sequential"]}))
    assert good == {"valid": True, "errors": [], "warnings": []}
    bad = ok(await run(engine, "composition_verify", {"stages": ["text_length", "text_upper"],
                                                      "operators": ["sequential"]}))
    assert bad["valid"] is False and "text_length->text_upper" in bad["errors"][0]


async def test_a_graph_written_against_upstreams_legacy_ids_runs(engine: Engine) -> None:
    # b4dfc6b0: text_template's v0 ID, as old upstream graphs spell it.
    res = await run(engine, "b4dfc6b0", {"template": "Hello, {{name}}!", "variables": {"name": "Alice"}})
    assert ok(res) == "Hello, Alice!"
    assert "legacy" in " ".join(res.warnings)


async def test_arrow_round_trip_runs_in_a_sandbox_with_pinned_pyarrow(engine: Engine) -> None:
    records = [{"a": 1, "b": "x"}, {"a": 2, "b": None}]
    res = await run(engine, "arrow_from_records", records)  # the default 30 s per stage
    encoded = ok(res)
    assert res.trace["stages"][0]["isolation"] == "bwrap"
    import base64

    import pyarrow as pa  # the test checks the bytes with the host's own pyarrow

    assert pa.ipc.open_stream(base64.b64decode(encoded)).read_all().to_pylist() == records
    assert ok(await run(engine, "records_to_arrow", encoded)) == records
    assert "not valid base64" in failed(await run(engine, "records_to_arrow", "%%%"), "stage_error")["message"]


async def test_arrow_without_the_extra_says_how_to_install_it(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    import noether_nix.stdlib.registry as registry

    monkeypatch.setattr(registry, "pyarrow_version", lambda: None)
    err = failed(await run(engine, "arrow_from_records", [{"a": 1}]), "arrow_unavailable")
    assert "noether-nix[arrow]" in err["message"]


# ------------------------------------------------------------ processes


def process_graph(*steps: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    """A Sequential of process stages; each step's config is merged into the previous output."""
    return graph({"op": "Sequential", "stages": [stage(name, config) for name, config in steps]})


async def test_process_stages_share_one_sandbox_per_run(engine: Engine) -> None:
    # spawn → wait (times out) → signal → wait (exits): the pid means the same
    # process across stages, because the run's process host owns it.
    res = await engine.run(process_graph(
        ("spawn_process", {"cmd": "sleep", "args": ["60"], "cwd": None, "env": None}),
        ("wait_process", {"timeout_ms": 300}),
    ), {}, RunOptions())
    assert ok(res) == {"exited": False, "timed_out": True}
    assert {e["isolation"] for e in res.trace["stages"]} == {"bwrap"}
    res = await engine.run(process_graph(  # no timeout_ms: waits until just before the stage's own timeout
        ("spawn_process", {"cmd": "sleep", "args": ["60"], "cwd": None, "env": None}),
        ("wait_process", {"timeout_ms": None}),
    ), {}, RunOptions(timeout_secs=3))
    assert ok(res) == {"exited": False, "timed_out": True}
    res = await engine.run(process_graph(
        ("spawn_process", {"cmd": "sleep", "args": ["60"], "cwd": None, "env": None}),
        ("signal_process", {"signal": "TERM"}),
    ), {}, RunOptions())
    assert ok(res) == {"sent": True}
    res = await engine.run(process_graph(
        ("spawn_process", {"cmd": "bash", "args": ["-c", "exit 0"], "cwd": None, "env": None}),
        ("wait_process", {"timeout_ms": 5000}),
    ), {}, RunOptions())
    assert ok(res) == {"exited": True, "timed_out": False}
    # Nothing a run spawned outlives it: the run ended once its process host's cgroup was empty.
    assert own_sandbox_cgroups() == {}


async def test_a_run_ends_only_when_its_spawned_processes_are_gone(engine: Engine) -> None:
    spawned: set[int] = set()

    async def watch(ev: Event) -> None:
        if isinstance(ev, StageFinished) and ev.name == "spawn_process" and ev.status == "ok":
            spawned.update(own_sandbox_pids())  # the process host and the sleep it spawned

    res = await engine.run(process_graph(
        ("spawn_process", {"cmd": "sleep", "args": ["60"], "cwd": None, "env": None}),
    ), {}, RunOptions(), emit=watch)
    assert isinstance(ok(res)["pid"], int)
    assert len(spawned) >= 2, spawned  # found by cgroup while the run was going
    assert own_sandbox_cgroups() == {}
    assert not [pid for pid in spawned if running(pid)]


async def test_process_stages_reach_only_their_own_processes(engine: Engine) -> None:
    res = await run(engine, "kill_process", {"pid": 1})
    assert "not spawned by this run" in failed(res, "stage_failed")["message"]
    res = await run(engine, "spawn_process", {"cmd": "/etc/no-such", "args": None, "cwd": None, "env": None})
    assert "no such program in the sandbox" in failed(res, "stage_failed")["message"]
    res = await run(engine, "wait_process", {"pid": 5, "timeout_ms": 120_000})
    assert "per-stage timeout" in failed(res, "stage_failed")["message"]


async def test_a_sandbox_sees_its_own_closure_of_the_store_not_other_stages(engine: Engine, add: AddStage) -> None:
    add("lister", "import os\ndef execute(x):\n    return sorted(os.listdir('/nix/store'))\n")
    other = add("other", "def execute(x):\n    return 'other'\n")
    assert ok(await run(engine, "other", 1)) == "other"
    seen = ok(await run(engine, "lister", 1))
    program = next(p for sid, _rt, p in engine.programs.programs() if sid == other.id)
    assert os.path.basename(program) not in seen  # another stage's program is not there
    assert any("python" in name for name in seen), seen  # its own runtime is
    assert len(seen) < len(os.listdir("/nix/store"))


async def test_higher_order_nesting_is_bounded(engine: Engine) -> None:
    value: Any = {"items": ["x"], "stage_id": "text_upper"}
    for _ in range(40):  # map of map of … of text_upper
        value = {"items": [value], "stage_id": "map"}
    res = await run(engine, "map", value)
    assert "nested more than 32 deep" in failed(res, "nesting_too_deep")["message"]
    shallow: Any = {"items": ["x"], "stage_id": "text_upper"}
    for _ in range(3):
        shallow = {"items": [shallow], "stage_id": "map"}
    assert ok(await run(engine, "map", shallow)) == [[[["X"]]]]


@pytest.mark.parametrize(("option", "grant", "why"), [
    ("allow_read", "/", "whole host"),
    ("allow_read", "/proc", "/proc cannot be bound"),
    ("allow_write", "/nix/store", "/nix cannot be bound writable"),
    ("allow_write", "relative/dir", "absolute"),
    ("allow_read", "/no/such/dir", "does not exist"),
])
async def test_grants_no_sandbox_may_get_are_refused_before_the_run(engine: Engine, option: str, grant: str,
                                                                     why: str) -> None:
    with pytest.raises(NoetherError) as refused:
        await run(engine, "read_file", {"path": "/etc/hostname"}, **{option: [grant]})
    assert refused.value.code == "invalid_grant" and why in refused.value.message


async def test_a_write_grant_through_a_symlink_is_refused(engine: Engine, shared_tmp: Path) -> None:
    tmp_path = shared_tmp
    (tmp_path / "real").mkdir()
    share_with_sandbox(tmp_path / "real", writable=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(NoetherError) as refused:
        await run(engine, "write_file", {"path": str(tmp_path / "link" / "f"), "content": "x"},
                  allow_write=[str(tmp_path / "link")])
    assert "goes through a symlink" in refused.value.message
    out = ok(await run(engine, "write_file", {"path": str(tmp_path / "real" / "f"), "content": "x"},
                       allow_write=[str(tmp_path / "real")]))
    assert out["bytes_written"] == 1


async def test_lifecycle_rules_hold_for_stages_a_higher_order_stage_names(engine: Engine, add: AddStage) -> None:
    gone = add("gone", "def execute(x):\n    return 'ran'\n")
    engine.store.transition(gone.id, "Tombstone")
    res = await run(engine, "map", {"items": [1], "stage_id": gone.id})
    assert "tombstoned" in failed(res, "stage_tombstoned")["message"]


async def test_retry_attempts_are_bounded_and_cancellable(engine: Engine, add: AddStage) -> None:
    res = await run(engine, "retry", {"stage_id": "parse_json", "input": "not json", "max_attempts": 10_000,
                                      "delay_ms": None})
    assert "at most 1000 attempts" in failed(res, "too_many_attempts")["message"]
    # 1000 quick in-process attempts yield to trio between attempts: other
    # tasks (the daemon's other clients, a cancellation) keep running.
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        res = await run(engine, "retry", {"stage_id": "parse_json", "input": "not json", "max_attempts": 1000,
                                          "delay_ms": None})
        nursery.cancel_scope.cancel()
    failed(res, "retry_exhausted")
    assert ticks >= 900


async def test_a_value_too_deep_to_process_is_refused_not_the_engine(engine: Engine) -> None:
    deep: Any = "x"
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(NoetherError) as refused:  # as the run's input: refused before it starts
        await run(engine, "to_json", deep)
    assert refused.value.code == "value_too_deep" and refused.value.path == "input"
    # Built by a stage inside the run: that stage fails, whether Python could hold the value or not.
    for depth in (129, 5000):
        err = failed(await run(engine, "parse_json", "[" * depth + "]" * depth), "value_too_deep")
        assert err["path"] == "root", err
    assert ok(await run(engine, "text_upper", "still serving")) == "STILL SERVING"


async def test_a_huge_map_keeps_a_bounded_trace(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    import noether_nix.engine.interpreter as engine_module

    monkeypatch.setattr(engine_module, "MAX_TRACE_ENTRIES", 10)
    res = await run(engine, "map", {"items": ["a"] * 20, "stage_id": "text_upper"}, trace="full")
    assert ok(res) == ["A"] * 20
    assert len(res.trace["stages"]) == 10
    assert res.trace["dropped"]["entries"] == 11  # 20 inner calls and the map itself, 10 kept
