"""`noether run` gives the stdlib's io stages what they may touch: file
grants, environment variables, the caller's stdin and stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.sandbox_access import share_with_sandbox


def graph_file(tmp_path: Path, stage: str) -> Path:
    p = tmp_path / f"{stage}.graph.json"
    p.write_text(json.dumps({"description": stage, "version": "1", "root": {"op": "Stage", "id": stage}}))
    return p


def run(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> tuple[int, Any, str]:
    import os

    proc = subprocess.run([sys.executable, "-m", "noether_nix.cli.main", "run", "--json", *args], input=stdin,
                          capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None, proc.stderr


def test_read_and_write_only_what_the_command_line_grants(shared_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tmp_path = shared_tmp  # root's sandboxes run as noether-sbx users: grant what they can reach
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    share_with_sandbox(tmp_path / "data", writable=True)
    (tmp_path / "data" / "in.txt").write_text("hello")
    read = graph_file(tmp_path, "read_file")
    rc, out, _ = run(str(read), "--input", json.dumps({"path": str(tmp_path / "data" / "in.txt")}),
                     "--allow-read", "data")  # relative to where the command runs
    assert rc == 0, out
    assert out["data"]["output"] == {"content": "hello", "size_bytes": 5}
    rc, out, err = run(str(read), "--input", json.dumps({"path": str(tmp_path / "data" / "in.txt")}))
    assert rc == 3 and "--allow-read" in json.dumps(err if out is None else out)
    write = graph_file(tmp_path, "write_file")
    rc, out, _ = run(str(write), "--input", json.dumps({"path": str(tmp_path / "data" / "out.txt"),
                                                         "content": "written"}), "--allow-write", "data")
    assert rc == 0, out
    assert (tmp_path / "data" / "out.txt").read_text() == "written"


def test_env_stdin_and_stdout_stages(tmp_path: Path) -> None:
    rc, out, _ = run(str(graph_file(tmp_path, "env_get")), "--input", '{"name": "GREETING"}', "--env", "GREETING",
                     env={"GREETING": "hi from the caller"})
    assert rc == 0 and out["data"]["output"] == "hi from the caller"
    rc, out, _ = run(str(graph_file(tmp_path, "env_get")), "--input", '{"name": "GREETING"}',
                     env={"GREETING": "not passed"})
    assert rc == 0 and out["data"]["output"] is None
    rc, out, _ = run(str(graph_file(tmp_path, "stdin_read")), "--stdin", stdin="piped\ntext")
    assert rc == 0 and out["data"]["output"] == "piped\ntext"
    rc, out, err = run(str(graph_file(tmp_path, "stdout_write")), "--input", '{"text": "to the terminal"}')
    assert rc == 0 and out["data"]["output"] is None
    assert err == "to the terminal"


@pytest.mark.parametrize("graph", ["hello.json", "operators.json"])
def test_stdout_is_one_envelope_that_jq_parses_and_logs_go_to_stderr(graph: str) -> None:
    import shutil

    examples = Path(__file__).resolve().parents[2] / "examples"
    cmd = [sys.executable, "-m", "noether_nix.cli.main", "run", str(examples / graph), "--json", "--local",
           "--isolate", "none"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["ok"] is True  # the whole of stdout is one JSON document
    assert "run_without_isolation" in proc.stderr  # the warning is logged, on stderr
    jq = shutil.which("jq")
    if jq:
        assert subprocess.run([jq, "."], input=proc.stdout, capture_output=True, text=True).returncode == 0
    # A failed run: still exactly one envelope on stdout, the error with the run's trace.
    failed = subprocess.run([*cmd[:4], "--local", "--json", "--input", "1", "--budget-cents", "1",
                             str(examples / "budget.json")], capture_output=True, text=True, timeout=300)
    doc = json.loads(failed.stdout)
    assert failed.returncode == 2 and doc["ok"] is False and doc["error"]["code"] == "budget_exceeded"
    assert not failed.stderr.lstrip().startswith("{")


def test_a_failed_run_is_one_error_envelope_with_its_trace(tmp_path: Path) -> None:
    spec = tmp_path / "boom.json"
    spec.write_text(json.dumps({"name": "boom", "input": "Any", "output": "Any", "effects": ["Fallible"],
                                "implementation": "def execute(x):\n    raise ValueError('boom')\n"}))
    g = tmp_path / "g.json"
    g.write_text(json.dumps({"description": "d", "version": "1", "stages": ["boom.json"],
                             "root": {"op": "Sequential", "stages": [{"op": "Stage", "id": "text_upper"},
                                                                     {"op": "Stage", "id": "boom"}]}}))
    rc, doc, err = run(str(g), "--local", "--input", '"x"')
    assert rc == 3 and doc["ok"] is False and doc["error"]["code"] == "stage_error"
    assert "boom" in doc["error"]["message"]
    assert [s["name"] for s in doc["data"]["trace"]["stages"]] == ["text_upper", "boom"]
    assert doc["data"]["status"] == "failed" and not err.lstrip().startswith("{")


def test_the_program_leaves_with_all_of_its_output_written_and_its_run_stored(tmp_path: Path) -> None:
    """``noether`` ends a one-shot command with ``os._exit`` (no interpreter
    teardown): nothing it printed or stored may be lost on the way out."""
    items = [f"w{i}" for i in range(60_000)]
    g = tmp_path / "map.json"
    g.write_text(json.dumps({"description": "m", "version": "1", "root": {"op": "Stage", "id": "map"}}))
    proc = subprocess.run([sys.executable, "-m", "noether_nix.cli.main", "run", "--json", "--local", str(g)],
                          input=json.dumps({"items": items, "stage_id": "text_upper"}), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)  # about 0.5 MB through the pipe, all of it
    assert doc["data"]["output"] == [t.upper() for t in items]
    shown = subprocess.run([sys.executable, "-m", "noether_nix.cli.main", "trace", "--json", doc["data"]["run_id"]],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert json.loads(shown.stdout)["data"]["run_id"] == doc["data"]["run_id"]
    # A failing command still says why, and with its own exit code.
    missing = subprocess.run([sys.executable, "-m", "noether_nix.cli.main", "run", "--json", "--local",
                              str(tmp_path / "absent.json")], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and json.loads(missing.stdout)["error"]["code"] == "file_not_found"
