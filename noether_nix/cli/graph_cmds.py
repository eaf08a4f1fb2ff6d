"""``noether check``, ``run``, ``trace``, ``runs`` and ``warmup``.

The graph file, the spec files it lists and the input are read here; the
backend (the live daemon, or this process) does the rest.
"""

from __future__ import annotations

import argparse
import os
import sys

from noether_nix.cli.common import CommandResult, backend, parse_json_arg, read_json_file
from noether_nix.errors import NoetherError
from noether_nix.terminal import visible

TYPE_CHECKING = False  # no typing import on a client's path (see errors.py)
if TYPE_CHECKING:
    from typing import Any


def _policy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("graph")
    p.add_argument("--input", help="the graph's input as JSON (a bare string is taken as text)")
    p.add_argument("--budget-cents", type=int)
    p.add_argument("--allow-effects", help="comma-separated effect kinds; Pure is always allowed, "
                   "'' or 'none' allows nothing else")
    p.add_argument("--allow-capabilities", help="comma-separated capabilities")
    p.add_argument("--allow-unsigned", action="store_true", help="run stages without a valid signature")
    p.add_argument("--no-optimize", action="store_true")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("check", help="parse, resolve, type-check and pre-flight a graph", parents=[common])
    _policy_args(p)
    p.set_defaults(handler=cmd_check, command="check")
    p = sub.add_parser("run", help="run a graph", parents=[common])
    _policy_args(p)
    p.add_argument("--dry-run", action="store_true", help="check only (same as `noether check`)")
    p.add_argument("--timeout-secs", type=float, help="per-stage wall-clock timeout (may only lower the default)")
    p.add_argument("--max-output-bytes", type=int, help="per-stage stdout cap (may only lower the default)")
    p.add_argument("--isolate", choices=["auto", "bwrap", "none"], help="isolation backend (none is unsafe)")
    p.add_argument("--no-cache", action="store_true", help="run every stage: no cached result is used (the pure-stage cache, a remote ActionCache)")
    p.add_argument("--no-output-type-checks", action="store_true",
                   help="let a stage return a value of another type than it declares (upstream's behaviour)")
    p.add_argument("--allow-read", action="append", default=[], metavar="PATH",
                   help="a file or directory read_file may read (repeatable)")
    p.add_argument("--allow-write", action="append", default=[], metavar="PATH",
                   help="a file or directory write_file may write (repeatable)")
    p.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]",
                   help="a variable env_get may see: NAME copies yours, NAME=VALUE sets it (repeatable)")
    p.add_argument("--stdin", action="store_true",
                   help="pass your standard input to stdin_read stages (the input then comes from --input)")
    p.add_argument("--full-trace", action="store_true",
                   help="trace every call of a Pure stdlib stage inside map/filter/reduce and long Sequentials "
                   "(default: one summary entry per loop: count, failures, timing histogram, first error)")
    p.set_defaults(handler=cmd_run, command="run")

    p = sub.add_parser("trace", help="show the latest trace of a composition, or a run's trace", parents=[common])
    p.add_argument("ref", help="composition id or run id")
    p.set_defaults(handler=cmd_trace, command="trace")
    p = sub.add_parser("runs", help="list recent runs", parents=[common])
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(handler=cmd_runs, command="runs")
    p = sub.add_parser("warmup", help="build the Nix programs of Active stages ahead of time", parents=[common])
    p.add_argument("refs", nargs="*")
    p.set_defaults(handler=cmd_warmup, command="warmup")


def _tokens(value: str | None) -> list[str] | None:
    return None if value is None else [t for t in value.split(",") if t.strip()]


def read_input(args: argparse.Namespace) -> Any:
    if args.input is not None:
        try:
            return parse_json_arg(args.input, what="--input")
        except NoetherError:
            return args.input  # upstream: a non-JSON --input is a raw string
    if not getattr(args, "stdin", False) and not sys.stdin.isatty():
        text = sys.stdin.read().strip()
        if text:
            try:
                return parse_json_arg(text, what="stdin")
            except NoetherError:
                return text
    return None


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The run options (``engine.options.RunOptions`` as JSON) of `run`, or the subset `check` has."""
    options: dict[str, Any] = {
        "budget_cents": args.budget_cents,
        "allow_effects": _tokens(args.allow_effects),
        "allow_capabilities": _tokens(args.allow_capabilities),
        "timeout_secs": getattr(args, "timeout_secs", None),
        "max_output_bytes": getattr(args, "max_output_bytes", None),
        "isolate": getattr(args, "isolate", None),
        "optimize": not args.no_optimize,
        "cache": not getattr(args, "no_cache", False),
        "output_type_checks": False if getattr(args, "no_output_type_checks", False) else None,
        "allow_unsigned": args.allow_unsigned,
        # Paths are the caller's: made absolute here, where the working directory means something.
        "allow_read": [os.path.abspath(p) for p in getattr(args, "allow_read", [])] or None,
        "allow_write": [os.path.abspath(p) for p in getattr(args, "allow_write", [])] or None,
        "env": _env_option(getattr(args, "env", [])),
        "stdin": sys.stdin.read() if getattr(args, "stdin", False) else None,
        "trace": "full" if getattr(args, "full_trace", False) else None,
    }
    return {k: v for k, v in options.items() if v is not None}


def _env_option(entries: list[str]) -> dict[str, str] | None:
    env: dict[str, str] = {}
    for entry in entries:
        name, eq, value = entry.partition("=")
        if not name:
            raise NoetherError("usage", f"--env {entry!r}: give NAME or NAME=VALUE", path="--env", exit_code=2)
        if eq:
            env[name] = value
        elif name in os.environ:
            env[name] = os.environ[name]
    return env or None


def add_listed(args: argparse.Namespace, raw: Any) -> None:
    """Add the spec files a graph lists under ``stages`` (our extension), signed, before it runs."""
    listed = raw.get("stages", []) if isinstance(raw, dict) else []
    if not isinstance(listed, list):
        raise NoetherError("invalid_graph", "must be an array of spec file paths", path="stages")
    if not listed:
        return
    from noether_nix.cli.stage_cmds import signed_stage_json

    base = os.path.dirname(args.graph)
    specs = []
    for i, rel in enumerate(listed):
        if not isinstance(rel, str):
            raise NoetherError("invalid_graph", "must be a spec file path", path=f"stages[{i}]")
        specs.append(signed_stage_json(os.path.join(base, rel)))
    for spec in specs:
        # A stage the store already has needs no add: peers that may run
        # graphs but not change the store can then run the graph.
        try:
            backend(args).stage_get(spec["id"])
            continue
        except NoetherError as e:
            if e.code != "stage_not_found":
                raise
        backend(args).stage_add(spec, build=False)


def cmd_check(args: argparse.Namespace) -> Any:
    raw = read_json_file(args.graph, what="graph file")
    add_listed(args, raw)
    return backend(args).check(raw, read_input(args), run_options(args), check_input=args.input is not None)


#: What ``noether run`` reports of a run's last event (``RunFinished``).
RUN_DATA_KEYS = ("composition_id", "run_id", "status", "output", "effects", "trace", "warnings", "spent_cents",
                 "cache")


def run_report(result: dict[str, Any]) -> tuple[dict[str, Any], NoetherError | None]:
    """The data of ``noether run`` from a run's last event (as builtins), and the error it ends with."""
    data = {k: result[k] for k in RUN_DATA_KEYS}
    err = result.get("error")
    if not err:
        return data, None
    code = 2 if err.get("code") == "budget_exceeded" else 3
    inner = NoetherError.from_dict(err)  # its message without the path it starts with
    return data, NoetherError(inner.code, f"execution failed: {inner.message}", path=inner.path, hint=inner.hint,
                              details=inner.details or None, exit_code=code)


def cmd_run(args: argparse.Namespace) -> Any:
    if args.dry_run:
        return cmd_check(args)
    raw = read_json_file(args.graph, what="graph file")
    add_listed(args, raw)
    params = {"graph": raw, "input": read_input(args), "options": run_options(args)}  # endpoints.Run
    view = getattr(args, "view", None)
    if view is not None:  # the human view: stages live, then the output (cli.human)
        with view.run_progress() as watch:
            finished = backend(args).run(params, watch)
    else:
        finished = backend(args).run(params, _stderr_progress(live=sys.stderr.isatty() and not args.json))
    data, err = run_report(finished)
    return data if err is None else CommandResult(data, err)


class _stderr_progress:
    """Events while stdout carries the envelope: what stdout_write stages write goes to stderr, always;
    one plain line per stage too when stderr is a terminal (else only ``stage_output`` events are wanted:
    a daemon client then decodes no other event)."""

    def __init__(self, *, live: bool) -> None:
        self.live = live
        self.kinds = None if live else frozenset({"stage_output"})

    def __call__(self, ev: Any) -> None:
        if type(ev).__name__ == "StageOutput":
            # On a terminal the text is shown, never obeyed (no escape sequence reaches it); into a file, as it is.
            sys.stderr.write(visible(ev.text) if sys.stderr.isatty() else ev.text)
            sys.stderr.flush()
        elif self.live:
            from noether_nix.cli.human import render_event

            if line := render_event(ev):
                print(line, file=sys.stderr, flush=True)


def cmd_trace(args: argparse.Namespace) -> Any:
    return backend(args).run_get(args.ref)


def cmd_runs(args: argparse.Namespace) -> Any:
    return backend(args).runs_list(args.limit)


def cmd_warmup(args: argparse.Namespace) -> Any:
    view = getattr(args, "view", None)
    if view is not None:
        with view.warmup_progress() as report:
            return backend(args).warmup(args.refs, on_progress=report)
    live = sys.stderr.isatty() and not args.json

    def progress(p: dict[str, Any]) -> None:
        if live:
            n = p["built"] + p["cached"] + len(p["failed"])
            print(f"\r  warmup {n}/{p['total']}", end="", file=sys.stderr, flush=True)

    return backend(args).warmup(args.refs, on_progress=progress)
