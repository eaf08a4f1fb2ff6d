"""A command that talks to a live daemon is a lean client: it imports neither
trio nor the engine, the sandbox, Nix, the store nor the graph code, and each
command's module loads only when that command runs (bench/cli_startup.py
measures the start-up this buys)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from noether_nix.cli.main import COMMANDS, build_parser, command_word
from tests.server.test_daemon_cli import start_daemon, stop

#: Run ``noether ARGS`` in a fresh interpreter, then print the modules it loaded (stderr, last line).
_PROBE = ("import json, sys\nfrom noether_nix.cli.main import main\ntry:\n    rc = main(sys.argv[1:])\n"
          "finally:\n    print(json.dumps(sorted(sys.modules)), file=sys.stderr)\nraise SystemExit(rc)\n")
#: What a client never loads.
HEAVY = ("trio", "noether_nix.engine.engine", "noether_nix.engine.interpreter", "noether_nix.engine.executor",
         "noether_nix.sandbox", "noether_nix.nix", "noether_nix.store", "noether_nix.graph", "noether_nix.model",
         "noether_nix.server", "noether_nix.backend.local", "sqlite3", "psutil", "nacl", "structlog")


def loaded(home: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOETHER_SOCKET", "NOETHER_LOCAL")}
    env.update({"NOETHER_HOME": str(home), "XDG_RUNTIME_DIR": str(home)})
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=120)
    return proc, json.loads(proc.stderr.strip().splitlines()[-1])


def lean(modules: list[str]) -> list[str]:
    """What a client of a live daemon does not load either, beyond ``HEAVY``: the schema libraries."""
    return [m for m in modules if m.split(".")[0] in ("msgspec", "typing", "typing_extensions", "pathlib")]


def heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)]


def test_version_loads_no_command_module(tmp_path: Path) -> None:
    proc, modules = loaded(tmp_path, "version")
    assert proc.returncode == 0 and json.loads(proc.stdout)["data"] == {"version": "0.1.0"}
    assert heavy(modules) == []
    assert not [m for m in modules if m.startswith("noether_nix.cli.") and m.endswith("_cmds")], modules
    assert "typing" not in modules and "msgspec" not in modules  # each costs about an interpreter start


def test_run_through_a_daemon_is_a_lean_client(tmp_path: Path) -> None:
    store, client = tmp_path / "store", tmp_path / "client"
    client.mkdir()
    sock = tmp_path / "run" / "noether.sock"
    daemon = start_daemon(store, sock)
    try:
        graph = tmp_path / "g.json"
        graph.write_text(json.dumps({"description": "d", "version": "1", "root": {"op": "Stage", "id": "text_upper"}}))
        proc, modules = loaded(client, "--socket", str(sock), "run", "--json", "--input", '"hi"', str(graph))
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["data"]["output"] == "HI"
        assert heavy(modules) == [], "a client of a live daemon loaded the engine's machinery"
        # Nor msgspec, typing or pathlib: each costs more than the client's own work (bench/cli_startup.py).
        assert lean(modules) == [], "a client of a live daemon loaded msgspec, typing or pathlib"
        proc, modules = loaded(client, "--socket", str(sock), "runs", "--limit", "1")
        assert proc.returncode == 0 and heavy(modules) == [] and lean(modules) == []
        assert json.loads(proc.stdout)["data"]["runs"][0]["status"] == "ok"
        # Bad parameters: the daemon's usage error, as embedded (the local backend checks them the same way).
        proc, modules = loaded(client, "--socket", str(sock), "runs", "--limit", "0")
        local, _ = loaded(client, "--local", "runs", "--limit", "0")
        for p in (proc, local):
            err = json.loads(p.stdout)["error"]
            assert p.returncode != 0 and err["code"] == "usage" and "GET /v1/runs" in err["message"], p.stdout
        # A graph that writes to stdout: its text reaches stderr (that event alone is decoded).
        printer = tmp_path / "p.json"
        printer.write_text(json.dumps({"description": "d", "version": "1",
                                       "root": {"op": "Stage", "id": "stdout_write"}}))
        proc, modules = loaded(client, "--socket", str(sock), "run", "--input", '{"text": "to stderr\\n"}',
                               str(printer))
        assert proc.returncode == 0 and proc.stderr.startswith("to stderr\n"), proc.stderr
        assert heavy(modules) == []
    finally:
        stop(daemon)


def test_help_lists_every_command_without_loading_them(tmp_path: Path) -> None:
    proc, modules = loaded(tmp_path, "--help")
    assert proc.returncode == 0
    shown = " ".join(proc.stdout.split())  # argparse wraps long help lines
    for name, _module, help_text in COMMANDS:
        assert name in shown and help_text in shown, name
    assert heavy(modules) == []


@pytest.mark.parametrize("argv,word", [
    (["run", "g.json"], "run"),
    (["--socket", "run", "stage", "list"], "stage"),  # a socket named "run" is the option's value
    (["--socket=/s", "--json", "trace", "x"], "trace"),
    (["--registry", "http://r", "stage", "get", "x"], "stage"),
    (["--version"], None),
])
def test_the_command_word_skips_global_options(argv: list[str], word: str | None) -> None:
    assert command_word(argv) == word


def test_the_full_parser_and_the_lazy_one_agree_on_each_command() -> None:
    """Every command the table names is registered by its module under that name."""
    full = build_parser()
    sub = next(a for a in full._actions if a.dest == "cmd")
    assert list(sub.choices) == [name for name, _m, _h in COMMANDS]  # type: ignore[attr-defined]
    for name, _module, help_text in COMMANDS:
        lazy = build_parser([name])
        lazy_sub = next(a for a in lazy._actions if a.dest == "cmd")
        assert lazy_sub.choices[name].format_usage() == sub.choices[name].format_usage()  # type: ignore[attr-defined]
        helps = {a.dest: a.help for a in sub._choices_actions}  # type: ignore[attr-defined]
        assert helps[name] == help_text
