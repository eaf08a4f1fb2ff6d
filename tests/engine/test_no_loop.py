"""Runs without an event loop (``engine.noloop``): a chain of stages started by a
one-shot process goes through the same engine code with blocking twins for
the sandbox run, the slots and the worker threads — and must come out exactly
as the same run on trio does: output, error, trace, events, stored run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from noether_nix.engine.engine import Engine, RunFinished, RunOptions
from tests.engine.conftest import AddStage, graph

#: What differs between two runs of the same graph however they run: ids, clocks, usage.
_VARYING = {"run_id", "started_at", "finished_at", "duration_ms", "wall_ms", "cpu_ms", "max_rss_kb", "build_ms", "step_index"}


def _steady(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _steady(v) for k, v in value.items() if k not in _VARYING}
    if isinstance(value, list):
        return [_steady(v) for v in value]
    return value


def _both(engine: Engine, doc: dict[str, Any], input: Any, options: RunOptions
          ) -> tuple[tuple[RunFinished, list[Any]], tuple[RunFinished, list[Any]]]:
    """The run without a loop and the same run on trio: each result with its events."""
    events: list[Any] = []

    async def emit(ev: Any) -> None:
        events.append(msgspec.to_builtins(ev))

    loopless = engine.run_without_loop(doc, input, options, emit=emit)
    assert isinstance(loopless, RunFinished), "this plan should have run without an event loop"
    first = list(events)
    events.clear()
    on_trio = trio.run(lambda: Engine().run(doc, input, options, emit=emit))
    return (loopless, first), (on_trio, list(events))


def _same(a: tuple[RunFinished, list[Any]], b: tuple[RunFinished, list[Any]], engine: Engine) -> None:
    (ra, ea), (rb, eb) = a, b
    assert _steady(msgspec.to_builtins(ra)) == _steady(msgspec.to_builtins(rb))
    assert _steady(ea) == _steady(eb)
    sa, sb = engine.runs.get(ra.run_id), engine.runs.get(rb.run_id)
    assert sa is not None and sb is not None
    assert _steady(sa) == _steady(sb)


ECHO = "def execute(input):\n    return input\n"


@pytest.mark.parametrize("case", ["ok", "chain", "raises", "timeout", "output_cap", "protocol", "bad_output_type"])
def test_a_chain_without_an_event_loop_runs_as_it_does_on_trio(engine: Engine, add: AddStage, case: str) -> None:
    options = RunOptions(cache=False)
    input: Any = "hello"
    if case == "ok":
        root: dict[str, Any] = {"op": "Stage", "id": add("echo", ECHO).id}
    elif case == "chain":
        shout = add("shout", "def execute(input):\n    return input + '!'\n", input="Text", output="Text")
        root = {"op": "Sequential", "stages": [{"op": "Stage", "id": shout.id}, {"op": "Stage", "id": "text_upper"},
                                               {"op": "Stage", "id": shout.id}]}
    elif case == "raises":
        root = {"op": "Stage", "id": add("boom", "def helper():\n    raise ValueError('no')\n\n"
                                         "def execute(input):\n    print('before')\n    helper()\n").id}
    elif case == "timeout":
        root = {"op": "Stage", "id": add("slow", "import time\ndef execute(input):\n    time.sleep(30)\n").id}
        options = RunOptions(cache=False, timeout_secs=1)
    elif case == "output_cap":
        root = {"op": "Stage", "id": add("big", "def execute(input):\n    return 'x' * 100000\n").id}
        options = RunOptions(cache=False, max_output_bytes=1000)
    elif case == "protocol":
        root = {"op": "Stage", "id": add("chatty", "import sys\ndef execute(input):\n    sys.stdout.write('{{{')\n"
                                         "    sys.stdout.flush()\n    import os; os._exit(0)\n").id}
    else:
        root = {"op": "Stage", "id": add("liar", "def execute(input):\n    return 7\n", output="Text").id}
    loopless, on_trio = _both(engine, graph(root), input, options)
    _same(loopless, on_trio, engine)
    if case == "chain":
        assert loopless[0].output == "HELLO!!"
    elif case == "ok":
        assert loopless[0].output == "hello"
    else:
        assert loopless[0].status == "failed" and loopless[0].error is not None
    if case == "timeout":
        assert loopless[0].error["code"] == "stage_timed_out"  # type: ignore[index]


@pytest.mark.parametrize("shape", ["branch_true", "branch_false", "const", "nested"])
def test_branches_consts_and_nesting_run_without_a_loop_as_on_trio(engine: Engine, add: AddStage, shape: str) -> None:
    shout = add("shout", "def execute(input):\n    return input + '!'\n", input="Text", output="Text")
    long = add("is_long", "def execute(input):\n    return len(input) > 3\n", input="Text", output="Bool")
    branch = {"op": "Branch", "predicate": {"op": "Stage", "id": long.id},
              "if_true": {"op": "Stage", "id": "text_upper"}, "if_false": {"op": "Stage", "id": shout.id}}
    input: Any = "hello" if shape == "branch_true" else "hi"
    if shape.startswith("branch"):
        root: dict[str, Any] = branch
    elif shape == "const":
        root = {"op": "Sequential", "stages": [{"op": "Const", "value": "fixed"}, {"op": "Stage", "id": shout.id}]}
    else:
        root = {"op": "Sequential", "stages": [{"op": "Stage", "id": shout.id}, branch,
                                               {"op": "Sequential", "stages": [{"op": "Stage", "id": shout.id}]}]}
    loopless, on_trio = _both(engine, graph(root), input, RunOptions(cache=False))
    _same(loopless, on_trio, engine)
    assert loopless[0].output == {"branch_true": "HELLO", "branch_false": "hi!", "const": "fixed!",
                                  "nested": "hi!!!"}[shape]


def test_the_pure_cache_serves_a_run_without_a_loop(engine: Engine, add: AddStage) -> None:
    stage = add("echo", ECHO, effects=["Pure"])
    doc = graph({"op": "Stage", "id": stage.id})
    first = engine.run_without_loop(doc, "once", RunOptions())
    again = engine.run_without_loop(doc, "once", RunOptions())
    assert isinstance(first, RunFinished) and isinstance(again, RunFinished)
    assert first.cache == {"hits": 0, "misses": 1} and again.cache == {"hits": 1, "misses": 0}
    assert again.output == "once" and again.trace["stages"][0].get("cached") is True


@pytest.mark.parametrize("root", [
    {"op": "Parallel", "branches": {"a": {"op": "Stage", "id": "text_upper"}, "b": {"op": "Stage", "id": "text_length"}}},
    {"op": "Stage", "id": "regex_match"},  # its work can outgrow its input: a worker thread, on trio
    {"op": "Stage", "id": "kv_get"},  # waits on the database
    {"op": "Sequential", "stages": [{"op": "Stage", "id": "text_upper"}] * 16},  # the bulk path yields to the loop
    {"op": "Sequential", "stages": [{"op": "Const", "value": {"a": "x"}}, {"op": "Parallel", "branches": {
        "a": {"op": "Stage", "id": "text_upper"}}}]},  # branches anywhere in the tree
    {"op": "Retry", "stage": {"op": "Stage", "id": "text_upper"}, "max_attempts": 2},  # waits between attempts
])
def test_plans_that_need_a_loop_are_handed_back_prepared_not_run(engine: Engine, root: dict[str, Any]) -> None:
    doc = graph(root)
    before = len(engine.runs.recent(100))
    handed = engine.run_without_loop(doc, "x", RunOptions())
    assert isinstance(handed, tuple)
    assert len(engine.runs.recent(100)) == before  # nothing ran, nothing was stored
    assert handed[0].composition_id == engine.prepare(doc, "x", RunOptions()).composition_id


def test_a_run_on_trio_takes_what_was_prepared(engine: Engine) -> None:
    doc = graph({"op": "Parallel", "branches": {"a": {"op": "Stage", "id": "text_upper"}}})
    handed = engine.run_without_loop(doc, "x", RunOptions())
    assert isinstance(handed, tuple)
    done = trio.run(lambda: engine.run(doc, "x", RunOptions(), prepared=handed))
    assert done.status == "ok" and done.output == {"a": "X"}


#: ``noether ARGS`` in a fresh interpreter; then, on stderr's last line, whether trio was ever loaded.
_PROBE = ("import json, sys\nfrom noether_nix.cli.main import main\ntry:\n    rc = main(sys.argv[1:])\nfinally:\n"
          "    from noether_nix.deferred import loaded\n    print(json.dumps(loaded('trio')), file=sys.stderr)\n"
          "raise SystemExit(rc)\n")


def _noether(home: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], bool]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOETHER_SOCKET", "NOETHER_LOCAL")}
    env.update({"NOETHER_HOME": str(home), "XDG_RUNTIME_DIR": str(home)})
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=300)
    return proc, json.loads(proc.stderr.strip().splitlines()[-1])


def test_an_embedded_run_of_a_chain_never_loads_trio(noether_home: Path, tmp_path: Path) -> None:
    spec = tmp_path / "echo.json"
    spec.write_text(json.dumps({"name": "echo", "description": "its input", "input": "Any", "output": "Any",
                                "effects": ["Pure"], "implementation": ECHO}))
    added, _ = _noether(noether_home, "stage", "add", "--local", str(spec))
    assert added.returncode == 0, added.stderr
    chain = tmp_path / "chain.json"
    chain.write_text(json.dumps(graph({"op": "Sequential", "stages": [
        {"op": "Stage", "id": "echo"}, {"op": "Stage", "id": "text_upper"}]})))
    proc, trio_loaded = _noether(noether_home, "run", "--local", "--json", "--input", '"quiet"', str(chain))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["data"]["output"] == "QUIET" and doc["data"]["status"] == "ok"
    assert not trio_loaded
    # The same run as stored: what `noether trace` shows.
    shown, _ = _noether(noether_home, "trace", "--local", "--json", doc["data"]["run_id"])
    assert shown.returncode == 0 and json.loads(shown.stdout)["data"]["status"] == "ok", shown.stdout[:400]
    parallel = tmp_path / "parallel.json"
    parallel.write_text(json.dumps(graph({"op": "Parallel", "branches": {"a": {"op": "Stage", "id": "echo"}}})))
    proc, trio_loaded = _noether(noether_home, "run", "--local", "--json", "--input", '"loud"', str(parallel))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["data"]["output"] == {"a": "loud"}
    assert trio_loaded  # a plan with branches runs on trio


def test_an_embedded_run_is_stored_as_the_users_own_either_way(engine: Engine, add: AddStage) -> None:
    from noether_nix.backend.local import LocalBackend

    echo = add("echo", ECHO)
    backend = LocalBackend()
    owners = []
    for root in ({"op": "Stage", "id": echo.id},  # without a loop
                 {"op": "Parallel", "branches": {"a": {"op": "Stage", "id": echo.id}}}):  # on trio
        done = backend.run({"graph": graph(root), "input": "x", "options": {"cache": False}}, lambda ev: None)
        assert done["status"] == "ok", done
        (owner,) = engine.store.conn.execute("SELECT requester_uid FROM runs WHERE run_id = ?",
                                             (done["run_id"],)).fetchone()
        owners.append(owner)
    assert owners == [os.getuid(), os.getuid()]


class _Suspends:
    def __await__(self) -> Any:
        yield "waits for an event loop"


class _LyingExecutor:
    """Says it never suspends, then does: the run ends as an engine bug, stored, not hung or half-done."""

    never_suspends = True

    async def execute(self, call: Any) -> Any:
        await _Suspends()
        raise AssertionError("not reached")


class _HonestExecutor(_LyingExecutor):
    never_suspends = False


def test_a_run_without_a_loop_that_waits_after_all_fails_as_an_engine_bug(add: AddStage) -> None:
    stage = add("echo", ECHO)
    doc = graph({"op": "Stage", "id": stage.id})
    engine = Engine(executor=_LyingExecutor())  # type: ignore[arg-type]
    done = engine.run_without_loop(doc, "x", RunOptions(cache=False))
    assert isinstance(done, RunFinished)
    assert done.status == "failed" and done.error is not None and done.error["code"] == "internal_error"
    assert "waited for one" in done.error["message"]
    stored = engine.runs.get(done.run_id)
    assert stored is not None and stored["status"] == "failed"
    # An executor given at construction that does not promise never to wait: the run goes to trio.
    assert isinstance(Engine(executor=_HonestExecutor()).run_without_loop(doc, "x", RunOptions()), tuple)  # type: ignore[arg-type]


def test_drive_raises_for_a_coroutine_that_keeps_waiting() -> None:
    from noether_nix.engine.noloop import SuspendedError, drive

    async def stubborn() -> None:
        while True:
            try:
                await _Suspends()
            except SuspendedError:
                continue

    with pytest.raises(SuspendedError):
        drive(stubborn())


@pytest.mark.parametrize("shape", ["chain", "parallel"])
def test_ctrl_c_ends_an_embedded_run_as_interrupted_with_nothing_left(noether_home: Path, tmp_path: Path,
                                                                      shape: str) -> None:
    """SIGINT to the CLI process (its sandboxes sit in sessions of their own, as a terminal's
    Ctrl-C leaves them): exit 130 with the ``interrupted`` envelope, no traceback, every
    sandboxed process and cgroup gone, the run stored as cancelled — without a loop and on trio."""
    import time as clock

    from tests.processes import running, sandbox_cgroups

    spec = tmp_path / "sleepy.json"
    spec.write_text(json.dumps({"name": "sleepy", "description": "sleeps", "input": "Any", "output": "Any",
                                "effects": ["Pure"], "implementation": "import time\ndef execute(input):\n"
                                "    time.sleep(60)\n    return input\n"}))
    added, _ = _noether(noether_home, "stage", "add", "--local", str(spec))
    assert added.returncode == 0, added.stderr
    root = {"op": "Stage", "id": "sleepy"} if shape == "chain" else \
        {"op": "Parallel", "branches": {"a": {"op": "Stage", "id": "sleepy"}}}
    doc = tmp_path / "g.json"
    doc.write_text(json.dumps(graph(root)))
    env = {k: v for k, v in os.environ.items() if k not in ("NOETHER_SOCKET", "NOETHER_LOCAL")}
    env.update({"NOETHER_HOME": str(noether_home), "XDG_RUNTIME_DIR": str(noether_home)})
    cli = subprocess.Popen([sys.executable, "-c", _PROBE, "run", "--local", "--json", "--no-cache", "--input",
                            '"x"', str(doc)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                           stdin=subprocess.DEVNULL)
    try:
        deadline = clock.monotonic() + 60
        pids: list[int] = []
        while clock.monotonic() < deadline:  # until the stage's sandbox has a process in its cgroup
            pids = sorted({p for members in sandbox_cgroups(cli.pid).values() for p in members})
            if len(pids) >= 2:  # bwrap and what it started
                break
            assert cli.poll() is None, cli.communicate()
            clock.sleep(0.05)
        assert len(pids) >= 2, "the stage never started"
        cli.send_signal(signal.SIGINT)
        out, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == 130, (out, err)
    envelope = json.loads(out)
    assert envelope["ok"] is False and envelope["error"]["code"] == "interrupted"
    assert "Traceback" not in err, err
    assert not [p for p in pids if running(p)], "a sandboxed process outlived the interrupted run"
    assert sandbox_cgroups(cli.pid) == {}
    assert json.loads(err.strip().splitlines()[-1]) is (shape == "parallel")  # trio only where it was needed
    listed, _ = _noether(noether_home, "runs", "--local", "--json")
    (latest,) = json.loads(listed.stdout)["data"]["runs"][:1]
    assert latest["status"] == "cancelled", latest


def test_ctrl_c_is_told_from_errors_at_any_depth() -> None:
    from noether_nix.engine.engine import _stopped_by
    from noether_nix.errors import interrupted

    ki = KeyboardInterrupt()
    nested = BaseExceptionGroup("outer", [BaseExceptionGroup("inner", [ki]), trio.Cancelled._create()])
    assert _stopped_by(ki) == _stopped_by(nested) == "the run was interrupted"
    assert interrupted(nested)
    mixed = BaseExceptionGroup("outer", [BaseExceptionGroup("inner", [KeyboardInterrupt()]), ValueError("bug")])
    assert _stopped_by(mixed) is None and not interrupted(mixed)  # a real error is never an interrupt
    only_cancelled = BaseExceptionGroup("g", [trio.Cancelled._create()])
    assert not interrupted(only_cancelled)  # no Ctrl-C in it: not "interrupted"
    assert _stopped_by(only_cancelled) == "the run was cancelled"


def test_ctrl_c_among_concurrent_failures_is_what_the_run_stands_for() -> None:
    from noether_nix.engine.interpreter import first_error
    from noether_nix.errors import NoetherError

    ki = KeyboardInterrupt()
    group = BaseExceptionGroup("parts", [NoetherError("stage_failed", "a branch failed"),
                                         BaseExceptionGroup("inner", [ki])])
    assert first_error(group) is ki
    failed = NoetherError("stage_failed", "a branch failed")
    assert first_error(BaseExceptionGroup("parts", [trio.Cancelled._create(), failed])) is failed


def test_a_daemon_peer_never_takes_the_path_without_a_loop(engine: Engine, add: AddStage) -> None:
    """Only the user's own embedded runs go without a loop: a daemon's peer that may not change
    the store, or one whose sandboxes run as that peer, is handed back to run on trio."""
    from noether_nix.service.context import Context, Peer
    from noether_nix.service.endpoints import Run
    from noether_nix.service.graph import run_graph_without_loop

    params = Run(graph=graph({"op": "Stage", "id": add("echo", ECHO).id}), input="x", options={"cache": False})
    reader = Context(Peer(uid=os.getuid() + 1, gid=os.getgid(), writer=False), make_engine=lambda: engine)
    assert run_graph_without_loop(reader, params) is None
    if os.geteuid() == 0:  # a root daemon runs another user's sandboxes as that user
        other = Context(Peer(uid=4242, gid=4242, writer=True), make_engine=lambda: engine)
        assert other.peer.run_as() is not None and run_graph_without_loop(other, params) is None
    before = len(engine.runs.recent(100))
    own = Context(Peer(uid=os.getuid(), gid=os.getgid(), writer=True), make_engine=lambda: engine)
    done = run_graph_without_loop(own, params)
    assert isinstance(done, RunFinished) and done.output == "x"
    assert len(engine.runs.recent(100)) == before + 1
