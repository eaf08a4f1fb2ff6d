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
    from noether_nix.graph.check import CheckOptions

    return CheckOptions(
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


def cmd_run(args: argparse.Namespace) -> Any:
    if args.dry_run:
        return cmd_check(args)
    cmd_check(args)
    raise NoetherError(
        "not_implemented",
        "the graph checks out, but executing graphs is not implemented yet (the engine lands with issue 6)",
        path=args.graph,
        hint=f"`noether check {args.graph}` shows the plan",
        exit_code=3,
    )
