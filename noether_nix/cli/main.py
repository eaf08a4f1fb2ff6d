"""``noether``: the command-line interface.

For programs (stdout not a terminal, or ``--json``), every command prints
exactly one ACLI envelope on stdout, ok or not (a failed command's envelope
carries its ``error``, and its ``data`` where there is some, such as a
failed run's trace); logs, and live progress when stderr is a terminal, go
to stderr. For people (stdout a terminal, or ``--human``), the same data
and errors are drawn as a view (``cli.human``), with live progress. Either
way the exit codes are upstream's (1 input/reference, 2 check/policy, 3
execution). Commands talk to a ``Backend``: the live daemon, or this
process (embedded).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from noether_nix import __version__
from noether_nix.cli.common import Args, CommandResult
from noether_nix.cli.envelope import Invocation, dump, error_envelope, ok_envelope
from noether_nix.cli.human import wants_human
from noether_nix.errors import NoetherError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        import re

        from noether_nix.suggest import did_you_mean

        # "invalid choice: 'rnu' (choose from 'version', 'run', …)": name the closest command.
        found = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if found:
            choices = re.findall(r"'([^']*)'", found.group(2))
            message = message.replace(found.group(0), f"invalid choice: {found.group(1)!r}"
                                      f"{did_you_mean(found.group(1), choices)}")
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
                   help="print the view for reading (the default when stdout is a terminal)")
    g.add_argument("--json", action="store_true", default=argparse.SUPPRESS if suppress else False,
                   help="print the JSON envelope, and no live progress (the default when stdout is not a "
                        "terminal)")
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
    human = wants_human(argv)  # known before parsing, so a usage error is shown the same way
    view = None
    try:
        parser = build_parser()
        args: Args = parser.parse_args(argv)  # type: ignore[assignment]
        human = wants_human(argv, human=bool(args.human), json_flag=bool(args.json))
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
        if human:
            view = _human_view()
        args.view = view  # handlers draw live progress on it (None: the envelope, progress on stderr)
        result = args.handler(args)
    except NoetherError as e:
        result = CommandResult(None, e)
    except KeyboardInterrupt:
        result = CommandResult(None, NoetherError("interrupted", "interrupted", exit_code=130))
    data, err = (result.data, result.error) if isinstance(result, CommandResult) else (result, None)
    if human:
        view = view or _human_view()
        if data is not None:
            view.show(inv.command, data)
        if err is not None:
            view.show_error(err, inv.command)
            return err.exit_code
        return 0
    if err is not None:
        dump(error_envelope(inv, err, data))
        return err.exit_code
    dump(ok_envelope(inv, data))
    return 0


def _human_view() -> Any:
    from noether_nix import logs
    from noether_nix.cli.human import make_view

    logs.setup(human=True)  # a log line on a terminal reads as a sentence, not JSON
    return make_view()


if __name__ == "__main__":
    raise SystemExit(main())
