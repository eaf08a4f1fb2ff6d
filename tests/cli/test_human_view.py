"""`noether` as a person sees it in a terminal, and as a program reads it through a pipe.

Each terminal test runs the real CLI on a pseudo-terminal and reads the
screen it leaves (tests/cli/terminal.py); timings and short ids are
normalised (``N ms``, ``ID``), everything else is the exact text.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.cli.terminal import in_terminal, normalise

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
HELLO = str(EXAMPLES / "hello.json")
_ESCAPES = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def plain(raw: bytes) -> str:
    """Everything written, control sequences taken out (what was drawn, including what was erased)."""
    return _ESCAPES.sub(b"", raw).decode("utf-8", "replace")


def piped(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "noether_nix.cli.main", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, cwd=cwd, timeout=300)


def write(path: Path, doc: Any) -> str:
    path.write_text(json.dumps(doc))
    return path.name


def spec(name: str, code: str, input: str = "Any", output: str = "Any", **more: Any) -> dict[str, Any]:
    return {"name": name, "input": input, "output": output, "implementation": code, **more}


def graph_of(tmp: Path, name: str, stage_spec: dict[str, Any], root: Any = None) -> str:
    write(tmp / f"{name}.spec.json", stage_spec)
    return write(tmp / f"{name}.graph.json", {"description": name, "version": "1", "stages": [f"{name}.spec.json"],
                                               "root": root or {"op": "Stage", "id": stage_spec["name"]}})


def test_hello_on_a_terminal_is_a_view_with_live_stages() -> None:
    first = in_terminal("run", HELLO)
    assert first.exit_code == 0, first.text
    assert re.fullmatch(r"✓ greet {12}root\.stages\[0\] {7}\d+ ms · bwrap · built in \d+ ms", first.lines[0])
    assert first.coloured
    second = in_terminal("run", HELLO)
    assert [normalise(line) for line in second.lines] == [
        "↺ greet            root.stages[0]       cached",
        "✓ text_upper       root.stages[1]       N ms · in-process",
        "HELLO, WORLD!",
        "✓ ok · N ms · 2 stages · 1 cache hit · run ID",
    ]
    # Live: each stage was drawn while it ran (a spinner, its elapsed time) and that line then erased.
    drawn = plain(first.raw)
    assert re.search(r"[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏] greet {12}root\.stages\[0\]\s+0:00:0\d", drawn)
    assert not any("0:00:0" in line for line in first.lines)


def test_no_color_turns_colours_off_and_leaves_the_words() -> None:
    in_terminal("run", HELLO)  # builds greet
    coloured = in_terminal("run", HELLO, "--no-cache")
    bare = in_terminal("run", HELLO, "--no-cache", env={"NO_COLOR": "1"})
    assert coloured.coloured and not bare.coloured
    assert bare.exit_code == 0
    assert [normalise(line) for line in bare.lines] == [normalise(line) for line in coloured.lines] == [
        "✓ greet            root.stages[0]       N ms · bwrap",
        "✓ text_upper       root.stages[1]       N ms · in-process",
        "HELLO, WORLD!",
        "✓ ok · N ms · 2 stages · run ID",
    ]


def test_through_a_pipe_the_envelope_is_unchanged_and_rich_is_never_loaded() -> None:
    code = ("import sys\nfrom noether_nix.cli.main import main\nrc = main(sys.argv[1:])\n"
            "sys.stderr.write('\\nRICH=%s\\n' % any(m == 'rich' or m.startswith('rich.') for m in sys.modules))\n"
            "sys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", code, "run", HELLO], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # all of stdout: one envelope
    assert proc.stdout.endswith("}\n") and proc.stdout.count("\n") == 1  # one compact line for a program
    assert list(doc) == ["ok", "command", "data", "meta"]
    assert list(doc["data"]) == ["composition_id", "run_id", "status", "output", "effects", "trace", "warnings",
                                 "spent_cents", "cache"]
    assert doc["data"]["output"] == "HELLO, WORLD!"
    assert "RICH=False" in proc.stderr
    human = subprocess.run([sys.executable, "-c", code, "run", HELLO, "--human"], capture_output=True, text=True,
                           timeout=300)
    assert "RICH=True" in human.stderr and "HELLO, WORLD!\n" in human.stdout
    assert not human.stdout.lstrip().startswith("{")
    # --json on a terminal: the envelope, and no live progress.
    t = in_terminal("run", HELLO, "--json")
    assert json.loads(t.text)["data"]["output"] == "HELLO, WORLD!"
    assert t.lines[:2] == ["{", '  "ok": true,']  # indented for a person
    assert "⠋" not in plain(t.raw)


def test_bare_noether_prints_help_and_version_prints_the_version() -> None:
    t = in_terminal()
    assert t.exit_code == 0
    assert t.lines[0].startswith("usage: noether")
    for flag in ("--socket PATH", "--local", "--human", "--json", "--registry URL", "--version"):
        assert flag in t.text
    v = in_terminal("--version")
    assert (v.exit_code, v.lines) == (0, ["noether 0.1.0"])
    typo = in_terminal("rnu", HELLO)
    assert typo.exit_code == 2
    assert typo.lines[0] == "error[usage]: argument COMMAND: invalid choice: 'rnu'; did you mean `run`?"


def test_a_failing_stage_shows_what_it_printed_and_its_traceback(tmp_path: Path) -> None:
    boom = graph_of(tmp_path, "boom", spec("boom", "def helper(x):\n    return 1 / x\n\ndef execute(x):\n"
                                                    "    print('about to divide', x)\n    return helper(x)\n",
                                           effects=["Fallible"]))
    in_terminal("run", boom, "--input", "1", cwd=tmp_path)  # builds it
    t = in_terminal("run", boom, "--input", "0", cwd=tmp_path)
    assert t.exit_code == 3
    shown = [normalise(line) for line in t.lines if line.strip(" ^~")]  # caret lines depend on the Python
    assert shown == [
        "! stage boom (ID) is Fallible but has no Retry wrapper; failures will propagate",
        "✗ boom             root                 N ms · bwrap · error",
        "✗ failed · N ms · 1 stage · run ID",
        "error[stage_error]: stage boom (ID) failed: ZeroDivisionError: division by zero (stage.py line 2, in helper)",
        "  at root",
        "  the stage printed:",
        "    about to divide 0",
        "  Traceback (most recent call last):",
        '    File "stage.py", line 6, in execute',
        "      return helper(x)",
        '    File "stage.py", line 2, in helper',
        "      return 1 / x",
        "  ZeroDivisionError: division by zero",
    ]
    # Piped, the same is in the envelope: the error's details and the trace entry's log.
    doc = json.loads(piped("run", boom, "--input", "0", cwd=tmp_path).stdout)
    assert doc["error"]["message"] == (f"root: execution failed: {doc['error']['message'].split(': ', 2)[2]}")
    assert doc["error"]["message"].count("root:") == 1  # the path is said once
    assert doc["error"]["details"]["printed"] == "about to divide 0\n"
    assert doc["error"]["details"]["traceback"].splitlines()[1] == '  File "stage.py", line 6, in execute'
    assert doc["data"]["trace"]["stages"][0]["log"].startswith("about to divide 0\nTraceback")


def test_declared_output_types_are_enforced(tmp_path: Path) -> None:
    to_num = graph_of(tmp_path, "to_num", spec("to_num", "def execute(x):\n    return x\n", "Text", "Number"))
    t = in_terminal("run", to_num, "--input", '"abc"', cwd=tmp_path)
    assert t.exit_code == 3
    assert [normalise(line) for line in t.lines[1:]] == [
        "✗ failed · N ms · 1 stage · run ID",
        "error[output_type_mismatch]: stage to_num (ID) returned a string ('abc'), but its declared output type "
        "is Number",
        "  at root",
        "  hint: fix the stage, or its declared output type; `--no-output-type-checks` runs it unchecked, as "
        "upstream does",
    ]
    assert re.fullmatch(r"✗ to_num {11}root {17}\d+ ms · bwrap( · built in \d+ ms)? · error", t.lines[0])
    lax = json.loads(piped("run", to_num, "--input", '"abc"', "--no-output-type-checks", cwd=tmp_path).stdout)
    assert lax["ok"] and lax["data"]["output"] == "abc"
    # A record output must not be null either.
    rec = graph_of(tmp_path, "rec", {**spec("rec", "def execute(x):\n    return None\n"),
                                     "output": {"Record": [["n", "Number"]]}})
    doc = json.loads(piped("run", rec, cwd=tmp_path).stdout)
    assert doc["error"]["code"] == "output_type_mismatch"
    assert doc["error"]["message"].endswith("returned null, but its declared output type is Record { n: Number }")


def test_a_stage_that_prints_its_result_gets_a_hint(tmp_path: Path) -> None:
    printer = graph_of(tmp_path, "printer", spec("printer", "def execute(x):\n    print(x.upper())\n", "Text", "Text"))
    t = in_terminal("run", printer, "--input", '"hi"', cwd=tmp_path)
    assert t.exit_code == 3
    assert [normalise(line) for line in t.lines[2:]] == [
        "error[output_type_mismatch]: stage printer (ID) returned null, but its declared output type is Text",
        "  at root",
        "  the stage printed:",
        "    HI",
        "  hint: the stage printed output but returned None: return the value from execute() instead of printing it",
    ]
    # Where null is allowed the run succeeds, with a warning, and what was printed is kept in the trace.
    anyp = graph_of(tmp_path, "anyp", spec("anyp", "def execute(x):\n    print('result', x)\n"))
    t = in_terminal("run", anyp, "--input", '"hi"', cwd=tmp_path)
    assert t.exit_code == 0
    assert normalise(t.lines[1]) == ("! stage anyp (ID) returned null and printed output: did it print its result "
                                     "instead of returning it?")
    assert t.lines[2] == "null"
    assert normalise(t.lines[3]) == "✓ ok · N ms · 1 stage · 1 stage printed output (noether trace ID) · run ID"
    run_id = t.lines[3].rsplit(" ", 1)[1]
    trace = in_terminal("trace", run_id[:6], cwd=tmp_path)  # a unique prefix is enough
    assert trace.exit_code == 0
    assert re.fullmatch(rf"run {run_id} · composition [0-9a-f]{{8}} · started \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d",
                        trace.lines[0])
    assert trace.lines[2:4] == ["  printed 1 line:", "    result hi"]


def test_stage_add_is_honest(tmp_path: Path) -> None:
    six = write(tmp_path / "six.json", spec("uses_six", "# requires: six\nimport six\ndef execute(x):\n"
                                                        "    return x\n"))
    t = in_terminal("stage", "add", six, cwd=tmp_path)
    assert t.exit_code == 1
    assert t.lines == [
        "error[unpinned_requirement]: requirement 'six' is not pinned (write six==VERSION)",
        "  at six",
        "  hint: pin it, or set NOETHER_ALLOW_UNPINNED_PIP=1; the stage was not added: fix it and add it again "
        "(--no-build stores it without building its program)",
    ]
    listed = json.loads(piped("stage", "list", "--lifecycle", "all", "--json").stdout)["data"]["stages"]
    assert "uses_six" not in {s["name"] for s in listed}  # nothing stored, nothing Active
    draft = write(tmp_path / "draft.json", spec("drafty", "def execute(x):\n    return x\n", lifecycle="Draft"))
    added = json.loads(piped("stage", "add", draft, cwd=tmp_path).stdout)["data"]
    assert added["lifecycle"] == "draft" and added["program"]["built"] is True
    t = in_terminal("stage", "add", write(tmp_path / "draft2.json", spec("drafty2", "def execute(x):\n    return 1\n",
                                                                          lifecycle="Draft")), cwd=tmp_path)
    assert normalise(t.lines[0]).startswith("✓ added stage ID (") and t.lines[0].endswith(") as draft")
    assert normalise(t.lines[-1]) == "  a Draft: `noether stage activate ID` makes it Active"


def test_specs_and_graphs_with_typos_teach(tmp_path: Path) -> None:
    net = write(tmp_path / "net.json", {**spec("net", "def execute(x):\n    return x\n"), "effect": ["Network"]})
    t = in_terminal("stage", "add", net, cwd=tmp_path)
    assert t.exit_code == 1
    assert t.lines[:2] == ["error[invalid_spec]: unknown field `effect` in stage spec; did you mean `effects`?",
                           "  at net.json"]
    impl = write(tmp_path / "impl.json", {"name": "impl", "input": "Text", "output": "Text",
                                          "implementaton": "def execute(x):\n    return x\n"})
    assert in_terminal("stage", "add", impl, cwd=tmp_path).lines[0] == (
        "error[invalid_spec]: unknown field `implementaton` in stage spec; did you mean `implementation`?")
    numbr = write(tmp_path / "numbr.json", spec("numbr", "def execute(x):\n    return x\n", "Numbr"))
    assert in_terminal("stage", "add", numbr, cwd=tmp_path).lines[0].startswith(
        "error[invalid_type]: unknown type kind 'Numbr'; did you mean `Number`? (known kinds: Any, Bool, Bytes, ")
    lc = write(tmp_path / "lc.json", spec("lc", "def execute(x):\n    return x\n", lifecycle="Drafty"))
    assert in_terminal("stage", "add", lc, cwd=tmp_path).lines[:2] == [
        "error[invalid_spec]: unknown lifecycle 'Drafty'; did you mean `Draft`? (a spec may ask for Draft or Active)",
        "  at lc.json.lifecycle"]
    g = write(tmp_path / "g.json", {"description": "d", "version": "1", "root": {"op": "Sequential", "stages": [
        {"op": "Stage", "id": "text_upper", "pining": "both"}]}})
    assert in_terminal("run", g, cwd=tmp_path).lines[:2] == [
        "error[invalid_graph]: unknown field `pining` in Stage node; did you mean `pinning`?", "  at root.stages[0]"]
    g = write(tmp_path / "g2.json", {"description": "d", "version": "1", "root": {"op": "Stage", "id": "text_uper"}})
    t = in_terminal("run", g, cwd=tmp_path)
    assert (t.exit_code, t.lines[0]) == (1, "error[stage_not_found]: no stage matches 'text_uper'; did you mean "
                                            "`text_upper` or `text_lower`? (tried id, id prefix, signature id, "
                                            "legacy id, name)")
    g = write(tmp_path / "g3.json", {"description": "d", "version": "1", "root": {"op": "Sequential", "stages": [
        {"op": "Stage", "id": "text_length"}, {"op": "Stage", "id": "text_upper"}]}})
    t = in_terminal("check", g, cwd=tmp_path)
    assert t.exit_code == 2
    assert [normalise(line) for line in t.lines[:2]] == [
        "error[type_mismatch]: type mismatch at position 0: stage text_length (ID) outputs Number, but stage "
        "text_upper (ID) takes Text: expected Text, got Number",
        "  at root.stages[1]"]
    t = in_terminal("run", HELLO, "--timeout-secs", "40")
    assert (t.exit_code, t.lines[0]) == (2, "error[invalid_limit]: --timeout-secs 40 is over the 30 s maximum here: "
                                            "a run may lower the per-stage limit, not raise it")


def test_rust_specs_are_stored_and_refused_when_run(tmp_path: Path) -> None:
    # The shape of upstream's examples/counter/counter-stage.json: Rust, canonical types, no effects.
    counter = write(tmp_path / "counter.json", {
        "name": "counter-component", "description": "Render a reactive counter UI component as a VNode",
        "input": {"kind": "Record", "value": {"count": {"kind": "Number"}}}, "output": {"kind": "VNode"},
        "effects": [], "language": "rust", "implementation": "pub fn execute(input: Value) -> Value { input }"})
    added = json.loads(piped("stage", "add", counter, cwd=tmp_path).stdout)
    assert added["ok"] and added["data"]["lifecycle"] == "active"
    sid = added["data"]["id"]
    assert added["data"]["warnings"] == [f"stage counter-component ({sid[:8]}) is written in Rust: it is stored "
                                         "with its ID, but noether-nix cannot run it, and a graph that uses it is "
                                         "refused before it runs"]
    g = write(tmp_path / "g.json", {"description": "d", "version": "1", "root": {"op": "Stage", "id": sid,
                                                                                 "_comment": "counter"}})
    t = in_terminal("run", g, "--input", '{"count": 1}', cwd=tmp_path)
    assert t.exit_code == 2
    assert t.lines[:2] == [f"error[language_not_runnable]: stage counter-component ({sid[:8]}) is written in Rust, "
                           "which noether-nix stores but cannot run (it runs python, javascript, bash)", "  at root"]


def test_a_big_map_is_a_progress_bar(tmp_path: Path) -> None:
    slow = spec("slow_double", "import time\ndef execute(x):\n    time.sleep(0.2)\n    return x * 2\n",
                "Number", "Number")
    g = graph_of(tmp_path, "slow", slow, {"op": "Stage", "id": "map", "config": {"stage_id": "slow_double"}})
    t = in_terminal("run", g, "--input", json.dumps(list(range(20))), cwd=tmp_path)
    assert t.exit_code == 0, t.text
    assert re.fullmatch(r"✓ map {14}root {17}\d+(\.\d)? m?s · 20 items", t.lines[0])
    assert t.lines[1] == json.dumps([2 * i for i in range(20)])
    drawn = plain(t.raw)
    assert "/20 items" in drawn and "━" in drawn  # the bar was drawn while it ran
    assert not any("slow_double" in line for line in t.lines)  # items are counted, not listed


def test_runs_show_local_times() -> None:
    in_terminal("run", HELLO)
    t = in_terminal("runs")
    assert t.lines[0].split() == ["run", "status", "started", "took", "composition"]
    assert re.match(r"[0-9a-f]{8}  ok {6}\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  \d+ ms", t.lines[1])


@pytest.fixture
def daemon(tmp_path: Path) -> Any:
    from tests.server.test_daemon_cli import start_daemon, stop

    home, sock = tmp_path / "daemon-home", tmp_path / "run" / "noether.sock"
    proc = start_daemon(home, sock)
    yield home, sock
    stop(proc)


def test_the_view_is_the_same_through_the_daemon(daemon: Any, tmp_path: Path) -> None:
    home, sock = daemon
    client = tmp_path / "client"
    client.mkdir()
    boom = graph_of(tmp_path, "boom", spec("boom", "def execute(x):\n    print('dividing')\n    return 1 / x\n"))
    for args, code in (([HELLO, "--no-cache"], 0), ([boom, "--input", "0"], 3)):
        in_terminal("--socket", str(sock), "run", *args, env={"NOETHER_HOME": str(client)}, cwd=tmp_path)  # builds
        via = in_terminal("--socket", str(sock), "run", *args, env={"NOETHER_HOME": str(client)}, cwd=tmp_path)
        local = in_terminal("--local", "run", *args, env={"NOETHER_HOME": str(home)}, cwd=tmp_path)
        assert via.exit_code == local.exit_code == code, via.text
        assert [normalise(line) for line in via.lines] == [normalise(line) for line in local.lines]
        assert not (client / "noether.db").exists()  # the client never opened a store: the daemon answered
    assert "the stage printed:" in via.text and "    dividing" in via.lines


def test_warmup_draws_a_progress_bar(tmp_path: Path) -> None:
    add = piped("stage", "add", "--no-build", write(tmp_path / "w.json", spec("warm_me", "def execute(x):\n"
                                                                                          "    return x\n")),
                cwd=tmp_path)
    assert add.returncode == 0, add.stdout
    t = in_terminal("warmup", "warm_me")
    assert t.exit_code == 0
    assert re.fullmatch(r"✓ 1 program: 1 built, 0 already built, 0 failed \(\d+(\.\d)? m?s building\)", t.lines[0])
    assert "building programs" in plain(t.raw) and "building programs" not in t.text  # drawn, then erased


@pytest.mark.skipif(not __import__("shutil").which("node"), reason="no host node")
def test_a_failing_javascript_stage_shows_its_own_line_numbers(tmp_path: Path) -> None:
    code = ("function helper(x) {\n  console.log('about to fail on', x);\n  throw new Error('bad input ' + x);\n}\n"
            "function execute(x) {\n  return helper(x);\n}\n")
    js = graph_of(tmp_path, "jsboom", {"name": "jsboom", "input": "Any", "output": "Any",
                                       "implementation": {"language": "javascript", "code": code}})
    t = in_terminal("run", js, "--input", "3", cwd=tmp_path)
    assert t.exit_code == 3
    assert [normalise(line) for line in t.lines[2:9]] == [
        "error[stage_error]: stage jsboom (ID) failed: Error: bad input 3 (stage.js line 3, in helper)",
        "  at root",
        "  the stage printed:",
        "    about to fail on 3",
        "  Error: bad input 3",
        "      at helper (stage.js:3:9)",
        "      at execute (stage.js:6:10)",
    ]
