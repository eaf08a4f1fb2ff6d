"""``noether``: the command-line interface.

For programs (stdout not a terminal, or ``--json``), every command prints
exactly one ACLI envelope on stdout, ok or not (one compact line, indented
only on a terminal; a failed command's envelope
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
import contextlib
import os
import sys

from noether_nix import __version__
from noether_nix.cli.common import Args, CommandResult
from noether_nix.cli.envelope import Invocation, dump, error_envelope, ok_envelope, wants_human
from noether_nix.errors import NoetherError, interrupted

TYPE_CHECKING = False  # no typing import on the CLI's entry (see errors.py)
if TYPE_CHECKING:
    from typing import Any


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # No abbreviated flags: `--sock /x runs` must not pass for `--socket` (the command word is
        # found before parsing, by exact flags), and a new flag must not change what an old
        # abbreviation meant.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

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


#: Every command: (name, the module that registers it, its one-line help). A
#: command's module is imported only when that command runs, so `noether
#: version` or a command talking to a live daemon never loads the engine, the
#: sandbox or Nix (bench/cli_startup.py measures it); the others appear in
#: ``--help`` from this table alone.
COMMANDS: tuple[tuple[str, str | None, str], ...] = (
    ("version", None, "print the version"),
    ("stage", "noether_nix.cli.stage_cmds", "manage stages"),
    ("check", "noether_nix.cli.graph_cmds", "parse, resolve, type-check and pre-flight a graph"),
    ("run", "noether_nix.cli.graph_cmds", "run a graph"),
    ("trace", "noether_nix.cli.graph_cmds", "show the latest trace of a composition, or a run's trace"),
    ("runs", "noether_nix.cli.graph_cmds", "list recent runs"),
    ("warmup", "noether_nix.cli.graph_cmds", "build the Nix programs of Active stages ahead of time"),
    ("store", "noether_nix.cli.store_cmds", "the stage store"),
    ("doctor", "noether_nix.cli.doctor", "report sandbox, limits and Nix status"),
    ("daemon", "noether_nix.cli.daemon_cmds", "serve the engine on a Unix socket"),
    ("service", "noether_nix.cli.service_cmds", "install or remove the systemd service (as root)"),
    ("registry", "noether_nix.cli.registry_cmds", "serve a stage registry"),
    ("sandbox", "noether_nix.sandbox.cli", "run a command under an isolation policy"),
    ("worker", "noether_nix.cli.worker_cmds", "serve stage calls from an REAPI cluster (Remote Workers API)"),
    ("launch", "noether_nix.cli.worker_cmds", "run the stage call in the current directory (an REAPI Action's command)"),
)
#: Global options that take a value (so the word after them is not the command).
_VALUED_GLOBALS = ("--socket", "--registry")


def command_word(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names (the first word that is not a global option), or None."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word == "--":
            return None
        elif word in _VALUED_GLOBALS:
            skip = True
        elif not word.startswith("-"):
            return word
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with ``argv``, only the command it names is fully registered
    (its module imported), every other one is a stub carrying its help line."""
    import importlib

    p = _Parser(prog="noether", description="Run Noether graphs in Nix-built sandboxes.",
                parents=[global_flags(suppress=False)])
    p.add_argument("--version", action="store_true", help="print the version")
    common = global_flags(suppress=True)
    sub = p.add_subparsers(dest="cmd", parser_class=_Parser, metavar="COMMAND")
    wanted = command_word(argv) if argv is not None else None
    load = {module for name, module, _ in COMMANDS if argv is None or name == wanted}
    registered: set[str] = set()
    for name, module, help_text in COMMANDS:
        if name in sub.choices:
            continue
        if module is None:
            v = sub.add_parser(name, help=help_text, parents=[common])
            v.set_defaults(handler=lambda a: {"version": __version__}, command="version")
        elif module in load:
            if module not in registered:
                registered.add(module)
                mod = importlib.import_module(module)
                if module.endswith(("daemon_cmds", "sandbox.cli", "worker_cmds")):
                    mod.register(sub)
                else:
                    mod.register(sub, common)
        else:  # a stub: its name and help line (the command that runs is another; no flags to copy)
            sub.add_parser(name, help=help_text).set_defaults(handler=_not_registered(name))
    return p


def _not_registered(name: str) -> Any:
    """The handler of a stub that was parsed after all: the command word was not found first."""
    def handler(args: Any) -> None:
        raise NoetherError("usage", f"could not tell that the command is {name!r}: put global options "
                           "as `--socket PATH` or `--socket=PATH`", hint="see `noether --help`", exit_code=2)

    return handler


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    inv = Invocation("noether")
    human = wants_human(argv)  # known before parsing, so a usage error is shown the same way
    view = None
    try:
        parser = build_parser(argv)
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
            global _one_shot
            _one_shot = False  # a daemon, worker or server: it ends the way Python ends
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
        from noether_nix.cli import common

        common.registry_flag = args.registry  # installed as a stage source once a local backend is chosen
        if human:
            view = _human_view()
        args.view = view  # handlers draw live progress on it (None: the envelope, progress on stderr)
        result = args.handler(args)
    except NoetherError as e:
        result = CommandResult(None, e)
    except KeyboardInterrupt:
        result = CommandResult(None, NoetherError("interrupted", "interrupted", exit_code=130))
    except BaseExceptionGroup as group:  # Ctrl-C inside trio's nurseries comes grouped
        if not interrupted(group):
            raise
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


#: Whether the command that ran was a one-shot one (see ``entry``).
_one_shot = True


def entry() -> None:
    """The ``noether`` program: ``main``, then leave without tearing the interpreter down.

    A one-shot command's work is done when ``main`` returns: its output is
    written, its runs are committed to the store, its children are reaped.
    Python's own exit would then spend ~40 ms (a third of an embedded run's
    own cost) clearing some 400 modules and 30,000 objects. So the streams are
    flushed and the process ends with ``os._exit``. Long-running commands
    (the daemon, a worker, the registry server) end normally.
    """
    code = main()
    if not _one_shot:
        raise SystemExit(code)
    for stream in (sys.stdout, sys.stderr):
        # A reader that left (EPIPE) or a closed stream: there is nothing more to say.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def _human_view() -> Any:
    from noether_nix import logs
    from noether_nix.cli.human import make_view

    logs.setup(human=True)  # a log line on a terminal reads as a sentence, not JSON
    return make_view()


if __name__ == "__main__":
    entry()
