"""``noether``: the command-line interface.

Every command prints exactly one ACLI envelope on stdout, ok or not (a
failed command's envelope carries its ``error``, and its ``data`` where
there is some, such as a failed run's trace), and exits with upstream's
codes (1 input/reference, 2 check/policy, 3 execution). Logs and live
progress go to stderr. Commands talk to a ``Backend``: the live daemon, or
this process (embedded).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from noether_nix import __version__
from noether_nix.cli.common import Args, CommandResult
from noether_nix.cli.envelope import Invocation, dump, error_envelope, ok_envelope
from noether_nix.errors import NoetherError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise NoetherError("usage", message, hint=f"see `{self.prog} --help`", exit_code=2)


def global_flags(suppress: bool) -> _Parser:
    """``--socket/--local/--human/--json``, accepted before or after the subcommand."""
    default: Any = argparse.SUPPRESS if suppress else None
    p = _Parser(add_help=False)
    g = p.add_argument_group("global options")
    g.add_argument("--socket", metavar="PATH", default=default,
                   help="talk to the daemon on this socket (it must answer)")
    g.add_argument("--local", action="store_true", default=argparse.SUPPRESS if suppress else False,
                   help="run embedded, even when a daemon is live")
    g.add_argument("--human", action="store_true", default=argparse.SUPPRESS if suppress else False,
                   help="print a view for reading instead of the JSON envelope")
    g.add_argument("--json", action="store_true", default=argparse.SUPPRESS if suppress else False,
                   help="print the JSON envelope, and no live progress")
    g.add_argument("--registry", metavar="URL", default=default,
                   help="a stage registry to merge with the local store (wins over $NOETHER_REGISTRY)")
    return p


def build_parser() -> argparse.ArgumentParser:
    from noether_nix.cli import (
        daemon_cmds,
        doctor,
        graph_cmds,
        registry_cmds,
        service_cmds,
        stage_cmds,
        store_cmds,
        worker_cmds,
    )
    from noether_nix.sandbox import cli as sandbox_cli

    p = _Parser(prog="noether", description="Run Noether graphs in Nix-built sandboxes.",
                parents=[global_flags(suppress=False)])
    p.add_argument("--version", action="store_true", help="print the version")
    common = global_flags(suppress=True)
    sub = p.add_subparsers(dest="cmd", parser_class=_Parser, metavar="COMMAND")

    v = sub.add_parser("version", help="print the version", parents=[common])
    v.set_defaults(handler=lambda a: {"version": __version__}, command="version")

    stage_cmds.register(sub, common)
    graph_cmds.register(sub, common)
    store_cmds.register(sub, common)
    doctor.register(sub, common)
    daemon_cmds.register(sub)
    service_cmds.register(sub, common)
    registry_cmds.register(sub, common)
    sandbox_cli.register(sub)
    worker_cmds.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    inv = Invocation("noether")
    human = "--human" in argv  # known before parsing, so a usage error is shown the same way
    try:
        parser = build_parser()
        args: Args = parser.parse_args(argv)  # type: ignore[assignment]
        human = bool(args.human)
        if args.version and args.cmd is None:
            print(f"noether {__version__}")
            return 0
        if args.cmd is None:
            parser.print_help()
            return 0
        inv.command = getattr(args, "command", args.cmd)
        raw_handler = getattr(args, "raw_handler", None)
        if raw_handler is not None:
            # Commands that speak through exit codes and the child's own output.
            return int(raw_handler(args))
        refs = [getattr(args, "ref", None), *(getattr(args, "refs", None) or [])]
        if "" in refs:
            # Over the daemon "" would vanish from the URL and mean "all": refuse it in both modes.
            raise NoetherError("usage", "a stage, run or composition reference cannot be empty", exit_code=2)
        if args.socket == "":
            raise NoetherError("usage", "--socket needs a path", exit_code=2)
        if args.registry == "":
            raise NoetherError("usage", "--registry needs a URL", path="--registry", exit_code=2)
        from noether_nix.cli import registry_cmds

        registry_cmds.configure(args.registry)
        result = args.handler(args)
    except NoetherError as e:
        result = CommandResult(None, e)
    except KeyboardInterrupt:
        result = CommandResult(None, NoetherError("interrupted", "interrupted", exit_code=130))
    data, err = (result.data, result.error) if isinstance(result, CommandResult) else (result, None)
    if human:
        from noether_nix.cli.human import render

        if data is not None:
            print(render(inv.command, data))
        if err is not None:
            print(f"error [{err.code}]: {err}" + (f"\nhint: {err.hint}" if err.hint else ""), file=sys.stderr)
            return err.exit_code
        return 0
    if err is not None:
        dump(error_envelope(inv, err, data))
        return err.exit_code
    dump(ok_envelope(inv, data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
