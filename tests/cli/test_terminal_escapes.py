"""Text from a stage, a store or a registry is shown on the user's terminal, never obeyed.

A hostile stage (or a stage's name and description from a registry, or a
graph's text an error quotes) could write escape sequences: OSC 52 sets
the clipboard, OSC 0 the window title, OSC 8 a hyperlink, CSI moves the
cursor and clears or overwrites what was shown; U+009B is CSI to a
terminal that reads 8-bit codes. Rich passes ESC through, and reads
``[link=…]`` in a string as markup. The human view spells every control
character out (``\\x1b``) and escapes markup in all of it.
"""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from noether_nix.engine.events import RunWarning, StageFinished, StageOutput, StageStarted
from noether_nix.errors import NoetherError
from tests.cli.terminal import in_terminal

# The clipboard, the title, a cleared screen, the cursor up a line, 8-bit CSI red, a carriage return over a line.
HOSTILE = "\x1b]52;c;ZXZpbA==\x07\x1b]0;pwned\x1b\\\x1b[2J\x1b[1A\x9b31m\rhidden"
MARKUP = "[link=https://evil.example]click[/link] [blink]"
# What must never reach the terminal from that text (rich itself writes none of these).
INJECTED = (b"\x1b]52", b"\x1b]0;pwned", b"\x1b]8;", b"\x1b[2J", b"\xc2\x9b", b"\x1b[5m")


def assert_shown_not_obeyed(raw: bytes | str) -> None:
    data = raw.encode() if isinstance(raw, str) else raw
    for seq in INJECTED:
        assert seq not in data, (seq, data[-400:])


def test_a_stages_output_and_what_it_writes_cannot_drive_the_terminal(tmp_path: Path) -> None:
    graph = {"description": "hostile", "version": "1", "root": {"op": "Sequential", "stages": [
        {"op": "Stage", "id": "stdout_write"},
        {"op": "Const", "value": "out:" + HOSTILE + MARKUP}]}}
    (tmp_path / "g.json").write_text(json.dumps(graph))
    t = in_terminal("run", "g.json", "--input", json.dumps({"text": "wrote:" + HOSTILE + "\n"}), cwd=tmp_path)
    assert t.exit_code == 0, t.text
    assert_shown_not_obeyed(t.raw)
    # Shown, spelt out, where it was written.
    assert any(line.startswith("wrote:\\x1b]52;c;ZXZpbA==\\x07\\x1b]0;pwned") for line in t.lines), t.text
    assert any(line.startswith("out:\\x1b]52;c;ZXZpbA==") and line.endswith("\\x0dhidden" + MARKUP)
               for line in t.lines), t.text


def test_an_error_that_quotes_a_graph_cannot_drive_the_terminal(tmp_path: Path) -> None:
    # json_path's error names the missing field as the graph spelt it (no '[' or '.': those are path syntax).
    field = "\x1b]52;c;ZXZpbA==\x07\x1b]0;pwned\x07\x9b31m\rhidden" + "\x1b]8;;https://evil.example\x07x"
    graph = {"description": "hostile", "version": "1",
             "root": {"op": "Stage", "id": "json_path", "config": {"data": {}, "path": "$." + field}}}
    (tmp_path / "g.json").write_text(json.dumps(graph))
    t = in_terminal("run", "g.json", cwd=tmp_path)
    assert t.exit_code == 3, t.text
    assert_shown_not_obeyed(t.raw)
    assert "'\\x1b]52;c;ZXZpbA==\\x07\\x1b]0;pwned\\x07\\x9b31m\\x0dhidden" in t.text, t.text


def view(width: int = 200) -> tuple[Any, io.StringIO]:
    from rich.console import Console

    from noether_nix.cli.human import View

    out = io.StringIO()
    # A terminal without colours: whatever ESC comes out came from the data.
    console = Console(file=out, force_terminal=True, color_system=None, width=width, highlight=False)
    return View(console, console), out


def test_every_view_shows_hostile_text_as_text() -> None:
    v, out = view()
    name = "evil" + HOSTILE + MARKUP
    v.show("stage list", {"stages": [{"id": "a" * 64, "lifecycle": "active", "name": name,
                                      "signature": MARKUP + HOSTILE, "effects": ["Pure" + HOSTILE]}], "count": 1})
    v.show("runs", {"runs": [{"run_id": "b" * 32, "status": "failed" + HOSTILE + MARKUP, "started_at": 1.0,
                              "finished_at": 2.0, "composition_id": "c" * 64 + HOSTILE}]})
    v.show("store stats", {"by_lifecycle": {name: 1}, "why": [name, {"deeper": name}]})
    v.show("stage test", {"stages": [{"id": "d" * 64 + HOSTILE, "name": name, "status": "failed",
                                      "details": name}], "total": 1, "failed": 1})
    trace = {"run_id": "e" * 32, "composition_id": "f" * 64, "status": "failed", "started_at": 1.0,
             "trace": {"stages": [{"name": name, "node_path": "root" + HOSTILE, "status": "Ok", "log": name}],
                       "error": {"code": "stage_failed" + HOSTILE, "message": name, "path": name}},
             "events": []}
    v.show("trace", trace)
    v.show_error(NoetherError("stage_error" + HOSTILE, "failed: " + name, path="root" + HOSTILE, hint=name,
                              details={"printed": name, "traceback": name,
                                       "errors": [{}, {"node_path": name, "message": name}]}))
    v.show_error(NoetherError("x", "y", details={"stderr_tail": name + "\nline two" + HOSTILE}))
    with v.run_progress() as watch:
        watch(StageStarted("r", node_path="root" + HOSTILE, stage_id="s" * 64, name=name))
        watch(StageOutput("r", node_path="root", text=name + "\n"))
        watch(RunWarning("r", code="w", message=name))
        watch(StageFinished("r", node_path="root" + HOSTILE, stage_id="s" * 64, name=name, status="error" + HOSTILE))
    shown = out.getvalue()
    assert_shown_not_obeyed(shown)
    # The live display's own cursor work aside, no control character is left.
    rest = re.sub(r"\x1b\[\??[0-9;]*[A-Za-z]", "", shown)
    assert "\x1b" not in rest and "\x9b" not in rest and "\x07" not in rest, repr(rest[:400])
    assert "\\x1b]52;c;ZXZpbA==" in shown and MARKUP in shown  # spelt out, brackets as written


def test_progress_on_a_terminal_stderr_while_stdout_is_piped(monkeypatch: pytest.MonkeyPatch) -> None:
    from noether_nix.cli.graph_cmds import _stderr_progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Tty()
    monkeypatch.setattr(sys, "stderr", err)
    on_event = _stderr_progress(live=True)
    on_event(StageOutput("r", node_path="root", text="wrote:" + HOSTILE + "\n"))
    on_event(StageStarted("r", node_path="root", stage_id="s" * 64, name="evil" + HOSTILE))
    on_event(StageFinished("r", node_path="root", stage_id="s" * 64, name="evil" + HOSTILE, status="ok"))
    on_event(RunWarning("r", code="w", message=HOSTILE))
    assert "\x1b" not in err.getvalue() and "\x9b" not in err.getvalue(), repr(err.getvalue())
    assert "wrote:\\x1b]52" in err.getvalue()
    # Into a file (not a terminal), what a stage wrote is kept as it is: it is the run's data.
    plain = io.StringIO()
    monkeypatch.setattr(sys, "stderr", plain)
    _stderr_progress(live=False)(StageOutput("r", node_path="root", text=HOSTILE))
    assert plain.getvalue() == HOSTILE


def test_human_log_lines_are_shown_not_obeyed(capsys: pytest.CaptureFixture[str]) -> None:
    from noether_nix.logs import _human_line

    line = _human_line(None, "warning", {"level": "warning", "event": "imported", "message": "from " + HOSTILE})
    assert "\x1b" not in line and line.startswith("noether: warning: from \\x1b]52")
