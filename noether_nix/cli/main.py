"""``noether``: the command-line interface.

Every command prints one ACLI envelope: success on stdout, failure on
stderr, with upstream's exit codes (1 input/reference, 2 check/policy,
3 execution).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from noether_nix import __version__
from noether_nix.cli import remote
from noether_nix.cli.envelope import CommandResult, Invocation, dump, error_envelope, ok_envelope
from noether_nix.errors import NoetherError

Handler = Callable[[argparse.Namespace], Any]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise NoetherError("usage", message, hint=f"see `{self.prog} --help`", exit_code=2)


def build_parser() -> argparse.ArgumentParser:
    from noether_nix.cli import daemon_cmds, doctor, graph_cmds, stage_cmds, store_cmds, worker_cmds
    from noether_nix.sandbox import cli as sandbox_cli

    p = _Parser(prog="noether", description="Run Noether graphs in Nix-built sandboxes.")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    v = sub.add_parser("version", help="print the version")
    v.set_defaults(handler=lambda a: {"version": __version__}, command="version")

    stage_cmds.register(sub)
    graph_cmds.register(sub)
    graph_cmds.register_more(sub)
    sandbox_cli.register(sub)
    doctor.register(sub)
    daemon_cmds.register(sub)
    store_cmds.register(sub)
    worker_cmds.register(sub)
    return p


def _take_socket(argv: list[str]) -> tuple[list[str], str | None]:
    """Remove ``--socket PATH`` / ``--socket=PATH`` from argv; "" when the path is missing."""
    for i, a in enumerate(argv):
        if a == "--socket":
            return argv[:i] + argv[i + 2:], argv[i + 1] if i + 1 < len(argv) else ""
        if a.startswith("--socket="):
            return argv[:i] + argv[i + 1:], a.split("=", 1)[1]
    return argv, None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --human is accepted anywhere on the line.
    human = "--human" in argv
    argv = [a for a in argv if a != "--human"]
    # --local forces embedded mode; --socket PATH names a daemon to talk to
    # (`noether daemon --socket` is the daemon's own option).
    local = "--local" in argv
    argv = [a for a in argv if a != "--local"]
    sock: str | None = None
    if argv and argv[0] != "daemon":
        argv, sock = _take_socket(argv)
    remote.configure(local=local, socket=sock)
    inv = Invocation("noether")
    try:
        if sock == "":
            raise NoetherError("usage", "--socket needs a path", exit_code=2)
        parser = build_parser()
        args = parser.parse_args(argv)
        inv.command = getattr(args, "command", args.cmd)
        raw_handler = getattr(args, "raw_handler", None)
        if raw_handler is not None:
            # Commands that speak through exit codes and the child's own output.
            return int(raw_handler(args))
        refs = [getattr(args, "ref", None), *(getattr(args, "refs", None) or [])]
        if "" in refs:
            # Over the daemon "" would vanish from the URL and mean "all": refuse it in both modes.
            raise NoetherError("usage", "a stage, run or composition reference cannot be empty", exit_code=2)
        handler: Handler = args.handler
        data = handler(args)
    except NoetherError as e:
        if human:
            print(f"error [{e.code}]: {e}" + (f"\nhint: {e.hint}" if e.hint else ""), file=sys.stderr)
        else:
            dump(error_envelope(inv, e), sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        dump(error_envelope(inv, NoetherError("interrupted", "interrupted", exit_code=130)), sys.stderr)
        return 130
    if human:
        from noether_nix.cli.human import render

        payload = data.data if isinstance(data, CommandResult) else data
        print(render(inv.command, payload))
        err = data.error if isinstance(data, CommandResult) else None
        if err is not None:
            print(f"error: {err}", file=sys.stderr)
            return err.exit_code
        return 0
    if isinstance(data, CommandResult):
        dump(ok_envelope(inv, data.data))
        if data.error is not None:
            dump(error_envelope(inv, data.error), sys.stderr)
            return data.error.exit_code
        return 0
    dump(ok_envelope(inv, data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
