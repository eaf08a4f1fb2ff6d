"""``noether check``, ``run``, ``trace``, ``runs`` and ``warmup``.

Each asks the live daemon, or runs embedded with the same functions
(``noether_nix.service.graph``). The graph file, the spec files it lists
and the input are read here in both modes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import msgspec

from noether_nix.cli import remote
from noether_nix.cli.common import open_store, parse_json_arg, read_json_file
from noether_nix.cli.envelope import CommandResult
from noether_nix.client import Client
from noether_nix.errors import NoetherError
from noether_nix.model.stage import Stage, stage_from_spec, stage_to_json
from noether_nix.service import graph as svc
from noether_nix.store.signing import sign_for_store
from noether_nix.store.stages import StageStore


def _policy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("graph")
    p.add_argument("--input", help="the graph's input as JSON (a bare string is taken as text)")
    p.add_argument("--budget-cents", type=int)
    p.add_argument("--allow-effects", help="comma-separated effect kinds; Pure is always allowed, "
                   "'' or 'none' allows nothing else")
    p.add_argument("--allow-capabilities", help="comma-separated capabilities")
    p.add_argument("--allow-unsigned", action="store_true", help="run stages without a valid signature")
    p.add_argument("--no-optimize", action="store_true")


def register(sub: Any) -> None:
    p = sub.add_parser("check", help="parse, resolve, type-check and pre-flight a graph")
    _policy_args(p)
    p.set_defaults(handler=cmd_check, command="check")
    p = sub.add_parser("run", help="run a graph")
    _policy_args(p)
    p.add_argument("--dry-run", action="store_true", help="check only (same as `noether check`)")
    p.add_argument("--timeout-secs", type=float, help="per-stage wall-clock timeout (may only lower the default)")
    p.add_argument("--max-output-bytes", type=int, help="per-stage stdout cap (may only lower the default)")
    p.add_argument("--isolate", choices=["auto", "bwrap", "none"], help="isolation backend (none is unsafe)")
    p.add_argument("--no-cache", action="store_true", help="do not use the pure-stage cache")
    p.add_argument("--json", action="store_true", help="no live progress; print only the envelope")
    p.add_argument("--allow-read", action="append", default=[], metavar="PATH",
                   help="a file or directory read_file may read (repeatable)")
    p.add_argument("--allow-write", action="append", default=[], metavar="PATH",
                   help="a file or directory write_file may write (repeatable)")
    p.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]",
                   help="a variable env_get may see: NAME copies yours, NAME=VALUE sets it (repeatable)")
    p.add_argument("--stdin", action="store_true",
                   help="pass your standard input to stdin_read stages (the input then comes from --input)")
    p.set_defaults(handler=cmd_run, command="run")


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


def run_options(args: argparse.Namespace) -> Any:
    """The run options of `run` (and the subset `check` has) from the command line."""
    from noether_nix.engine.engine import RunOptions

    return RunOptions(
        budget_cents=args.budget_cents,
        allow_effects=_tokens(args.allow_effects),
        allow_capabilities=_tokens(args.allow_capabilities),
        timeout_secs=getattr(args, "timeout_secs", None),
        max_output_bytes=getattr(args, "max_output_bytes", None),
        isolate=getattr(args, "isolate", None),
        optimize=not args.no_optimize,
        cache=not getattr(args, "no_cache", False),
        allow_unsigned=args.allow_unsigned,
        # Paths are the caller's: made absolute here, where the working directory means something.
        allow_read=[os.path.abspath(p) for p in getattr(args, "allow_read", [])] or None,
        allow_write=[os.path.abspath(p) for p in getattr(args, "allow_write", [])] or None,
        env=_env_option(getattr(args, "env", [])),
        stdin=sys.stdin.read() if getattr(args, "stdin", False) else None,
    )


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


def listed_stages(raw: Any, graph_path: str) -> list[Stage]:
    """The stages of the spec files a graph lists under ``stages`` (our extension), signed."""
    listed = raw.get("stages", []) if isinstance(raw, dict) else []
    if not isinstance(listed, list):
        raise NoetherError("invalid_graph", "must be an array of spec file paths", path="stages")
    base = Path(graph_path).parent
    out = []
    for i, rel in enumerate(listed):
        if not isinstance(rel, str):
            raise NoetherError("invalid_graph", "must be a spec file path", path=f"stages[{i}]")
        spec_path = str(base / rel)
        out.append(sign_for_store(stage_from_spec(read_json_file(spec_path, what="spec file"), path=spec_path)))
    return out


def add_listed(stages: list[Stage], client: Client | None, store: StageStore | None) -> None:
    from noether_nix.service.stages import store_stage

    for stage in stages:
        if client is not None:
            # A stage the daemon already has needs no add: peers that may run
            # graphs but not change the store can then run the graph.
            try:
                client.call("GET", f"/v1/stages/{remote.seg(stage.id)}")
                continue
            except NoetherError as e:
                if e.code != "stage_not_found":
                    raise
            client.call("POST", "/v1/stages", {"spec": stage_to_json(stage), "build": False})
        else:
            assert store is not None
            store_stage(store, stage)


def cmd_check(args: argparse.Namespace) -> Any:
    raw = read_json_file(args.graph, what="graph file")
    stages = listed_stages(raw, args.graph)
    graph_input, check_input = read_input(args), args.input is not None
    options = run_options(args)
    client = remote.daemon()
    if client is not None:
        add_listed(stages, client, None)
        return client.call("POST", "/v1/check", {"graph": raw, "input": graph_input, "check_input": check_input,
                                                 "options": msgspec.to_builtins(options)})
    from noether_nix.engine.engine import Engine

    store = open_store()
    add_listed(stages, None, store)
    return svc.check_graph(Engine(store=store), raw, graph_input, options, check_input=check_input)


def _progress(ev: Any, live: bool) -> None:
    """Live progress on a terminal; what stdout_write stages write, always, on
    stderr (stdout carries the envelope)."""
    from noether_nix.cli.human import render_event
    from noether_nix.engine.events import StageOutput

    if isinstance(ev, StageOutput):
        sys.stderr.write(ev.text)
        sys.stderr.flush()
        return
    line = render_event(ev) if live else None
    if line:
        print(line, file=sys.stderr, flush=True)


def _run_via_daemon(client: Client, raw: Any, graph_input: Any, options: Any, live: bool) -> dict[str, Any]:
    from noether_nix.engine.events import Event

    final: dict[str, Any] | None = None
    for ev in client.run(raw, graph_input, msgspec.to_builtins(options)):
        if ev.get("event") == "result":
            final = ev
        else:
            with contextlib.suppress(msgspec.ValidationError):  # an event kind this client does not know
                _progress(msgspec.convert(ev, Event), live)
    if final is None:
        raise NoetherError("daemon_error", "the daemon closed the stream without a result", path=client.path,
                           exit_code=3)
    return final


def cmd_run(args: argparse.Namespace) -> Any:
    if args.dry_run:
        return cmd_check(args)
    raw = read_json_file(args.graph, what="graph file")
    stages = listed_stages(raw, args.graph)
    graph_input = read_input(args)
    options = run_options(args)
    live = sys.stderr.isatty() and not args.json
    client = remote.daemon(timeout=None)  # a run may take as long as its stages do
    if client is not None:
        add_listed(stages, client, None)
        result = _run_via_daemon(client, raw, graph_input, options, live)
    else:
        import trio

        from noether_nix.engine.engine import Engine

        store = open_store()
        add_listed(stages, None, store)
        engine = Engine(store=store)

        async def progress(ev: Any) -> None:
            _progress(ev, live)

        result = msgspec.to_builtins(trio.run(lambda: engine.run(raw, graph_input, options, emit=progress)))
    data, err = svc.run_report(result)
    return data if err is None else CommandResult(data, err)


def register_more(sub: Any) -> None:
    p = sub.add_parser("trace", help="show the latest trace of a composition, or a run's trace")
    p.add_argument("ref", help="composition id or run id")
    p.set_defaults(handler=cmd_trace, command="trace")
    p = sub.add_parser("runs", help="list recent runs")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(handler=cmd_runs, command="runs")
    p = sub.add_parser("warmup", help="build the Nix programs of Active stages ahead of time")
    p.add_argument("refs", nargs="*")
    p.set_defaults(handler=cmd_warmup, command="warmup")


def cmd_trace(args: argparse.Namespace) -> Any:
    client = remote.daemon()
    if client is not None:
        return client.call("GET", f"/v1/runs/{remote.seg(args.ref)}")
    from noether_nix.store.runs import RunStore

    return svc.find_run(RunStore(open_store().conn), args.ref)


def cmd_runs(args: argparse.Namespace) -> Any:
    client = remote.daemon()
    if client is not None:
        return client.call("GET", f"/v1/runs?limit={args.limit}")
    from noether_nix.store.runs import RunStore

    return svc.recent_runs(RunStore(open_store().conn), args.limit)


def cmd_warmup(args: argparse.Namespace) -> Any:
    client = remote.daemon(timeout=None)  # builds take their time
    if client is not None:
        return client.call("POST", "/v1/warmup", {"refs": args.refs})
    import trio

    from noether_nix.nix.registry import ProgramRegistry

    store = open_store()
    live = sys.stderr.isatty()

    def progress(p: dict[str, Any]) -> None:
        if live:
            n = p["built"] + p["cached"] + len(p["failed"])
            print(f"\r  warmup {n}/{p['total']}", end="", file=sys.stderr, flush=True)

    return trio.run(lambda: svc.warmup_stages(store, ProgramRegistry(store.conn), args.refs, progress=progress))
