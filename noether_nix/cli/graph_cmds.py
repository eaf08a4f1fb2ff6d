"""``noether check`` and ``noether run``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from noether_nix.cli.common import open_store, parse_json_arg, read_json_file
from noether_nix.errors import NoetherError
from noether_nix.model.stage import stage_from_spec
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
    p.set_defaults(handler=cmd_run, command="run")


def _tokens(value: str | None) -> list[str] | None:
    return None if value is None else [t for t in value.split(",") if t.strip()]


def read_input(args: argparse.Namespace) -> Any:
    if args.input is not None:
        try:
            return parse_json_arg(args.input, what="--input")
        except NoetherError:
            return args.input  # upstream: a non-JSON --input is a raw string
    if not sys.stdin.isatty():
        text = sys.stdin.read().strip()
        if text:
            try:
                return parse_json_arg(text, what="stdin")
            except NoetherError:
                return text
    return None


def add_listed_specs(raw: Any, graph_path: str, store: StageStore) -> list[str]:
    """Add the spec files a graph lists under ``stages`` (our extension)."""
    from noether_nix.cli.stage_cmds import sign_for_store

    listed = raw.get("stages", []) if isinstance(raw, dict) else []
    if not isinstance(listed, list):
        raise NoetherError("invalid_graph", "must be an array of spec file paths", path="stages")
    base = Path(graph_path).parent
    added = []
    for i, rel in enumerate(listed):
        if not isinstance(rel, str):
            raise NoetherError("invalid_graph", "must be a spec file path", path=f"stages[{i}]")
        spec_path = str(base / rel)
        stage = sign_for_store(stage_from_spec(read_json_file(spec_path, what="spec file"), path=spec_path))
        store.add(stage, activate=True)
        added.append(stage.id)
    return added


def check_options(args: argparse.Namespace) -> Any:
    from noether_nix.engine.engine import sandbox_usable
    from noether_nix.graph.check import CheckOptions

    return CheckOptions(
        isolation_available=getattr(args, "isolate", None) == "none" or sandbox_usable(),
        allow_effects=_tokens(args.allow_effects),
        allow_capabilities=_tokens(args.allow_capabilities),
        budget_cents=args.budget_cents,
        allow_unsigned=args.allow_unsigned,
        optimize=not args.no_optimize,
    )


def cmd_check(args: argparse.Namespace) -> Any:
    from noether_nix.graph.check import check_report, prepare

    raw = read_json_file(args.graph, what="graph file")
    store = open_store()
    add_listed_specs(raw, args.graph, store)
    prepared = prepare(raw, store=store, options=check_options(args), input=read_input(args),
                       check_input=args.input is not None)
    return check_report(prepared)


def live_daemon() -> str | None:
    """The daemon to talk to, unless --local: --socket, $NOETHER_SOCKET, or the default socket if live."""
    import os

    if os.environ.get("NOETHER_LOCAL"):
        return None
    from noether_nix.client import daemon_socket_if_live

    return daemon_socket_if_live(os.environ.get("NOETHER_SOCKET"))


def _inline_specs(raw: Any, graph_path: str) -> list[Any]:
    listed = raw.get("stages", []) if isinstance(raw, dict) else []
    base = Path(graph_path).parent
    return [read_json_file(str(base / rel), what="spec file") for rel in listed if isinstance(rel, str)]


def _run_via_daemon(sock: str, args: argparse.Namespace, options: dict[str, Any]) -> Any:
    from noether_nix.cli.envelope import CommandResult
    from noether_nix.client import Client

    raw = read_json_file(args.graph, what="graph file")
    client = Client(sock)
    for spec in _inline_specs(raw, args.graph):
        status, body = client.request("POST", "/v1/stages", {"spec": spec})
        if status != 200:
            err = body.get("error", {}) if isinstance(body, dict) else {}
            raise NoetherError(err.get("code", "daemon_error"), err.get("message", str(body)), exit_code=1)
    final: dict[str, Any] | None = None
    for ev in client.run(raw, read_input(args), {k: v for k, v in options.items() if v is not None}):
        if ev.get("event") == "result":
            final = ev
        elif sys.stderr.isatty() and not args.json:
            print(f"  {ev.get('event')} {ev.get('node_path', '')} {ev.get('status', '')}", file=sys.stderr)
    if final is None:
        raise NoetherError("daemon_error", "the daemon closed the stream without a result", path=sock, exit_code=3)
    data = {k: final[k] for k in ("composition_id", "run_id", "status", "output", "effects", "trace", "warnings",
                                  "spent_cents", "cache")}
    if final.get("error"):
        code = 2 if final["error"].get("code") == "budget_exceeded" else 3
        return CommandResult(data, NoetherError(final["error"]["code"],
                                                f"execution failed: {final['error']['message']}",
                                                path=final["error"].get("path"), exit_code=code))
    return data


def cmd_run(args: argparse.Namespace) -> Any:
    if args.dry_run:
        return cmd_check(args)
    sock = live_daemon()
    if sock is not None:
        return _run_via_daemon(sock, args, {
            "budget_cents": args.budget_cents, "allow_effects": _tokens(args.allow_effects),
            "allow_capabilities": _tokens(args.allow_capabilities), "timeout_secs": args.timeout_secs,
            "max_output_bytes": args.max_output_bytes, "isolate": args.isolate, "optimize": not args.no_optimize,
            "cache": not args.no_cache, "allow_unsigned": args.allow_unsigned})
    import trio

    from noether_nix.cli.envelope import CommandResult
    from noether_nix.engine.engine import Engine, RunOptions
    from noether_nix.engine.events import Event

    raw = read_json_file(args.graph, what="graph file")
    store = open_store()
    add_listed_specs(raw, args.graph, store)
    engine = Engine(store=store)
    options = RunOptions(
        budget_cents=args.budget_cents,
        allow_effects=_tokens(args.allow_effects),
        allow_capabilities=_tokens(args.allow_capabilities),
        timeout_secs=args.timeout_secs,
        max_output_bytes=args.max_output_bytes,
        isolate=args.isolate,
        optimize=not args.no_optimize,
        cache=not args.no_cache,
        allow_unsigned=args.allow_unsigned,
    )
    live = sys.stderr.isatty() and not args.json

    async def progress(ev: Event) -> None:
        from noether_nix.cli.human import render_event

        line = render_event(ev)
        if line:
            print(line, file=sys.stderr, flush=True)

    result = trio.run(lambda: engine.run(raw, read_input(args), options, emit=progress if live else None))
    data = {
        "composition_id": result.composition_id,
        "run_id": result.run_id,
        "status": result.status,
        "output": result.output,
        "effects": result.effects,
        "trace": result.trace,
        "warnings": result.warnings,
        "spent_cents": result.spent_cents,
        "cache": result.cache,
    }
    if result.error is not None:
        code = 2 if result.error.get("code") == "budget_exceeded" else 3
        return CommandResult(data, NoetherError(result.error["code"], f"execution failed: {result.error['message']}",
                                                path=result.error.get("path"), exit_code=code))
    return data


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
    from noether_nix.store.runs import RunStore

    runs = RunStore(open_store().conn)
    run = runs.get(args.ref) or runs.latest(args.ref)
    if run is None:
        raise NoetherError("trace_not_found", f"no run or composition {args.ref!r}", path=args.ref)
    return run


def cmd_runs(args: argparse.Namespace) -> Any:
    from noether_nix.store.runs import RunStore

    return {"runs": RunStore(open_store().conn).recent(args.limit)}


def cmd_warmup(args: argparse.Namespace) -> Any:
    import trio

    from noether_nix.nix.registry import ProgramRegistry
    from noether_nix.nix.warmup import warmup

    store = open_store()
    stages = [store.resolve(r) for r in args.refs] if args.refs else [s for s in store.all() if s.state == "Active"]
    live = sys.stderr.isatty()

    def progress(p: dict[str, Any]) -> None:
        if live:
            n = p["built"] + p["cached"] + len(p["failed"])
            print(f"\r  warmup {n}/{p['total']}", end="", file=sys.stderr, flush=True)

    return trio.run(lambda: warmup(stages, ProgramRegistry(store.conn), progress=progress))
