"""Helpers shared by CLI commands."""

from __future__ import annotations

import argparse

from noether_nix.errors import NoetherError

TYPE_CHECKING = False  # no typing import on the CLI's entry (see errors.py)
if TYPE_CHECKING:
    from typing import Any

    from noether_nix.backend import Backend


class Args(argparse.Namespace):
    """The parsed command line (global flags typed; each command adds its own)."""

    socket: str | None
    local: bool
    human: bool
    json: bool
    version: bool
    registry: str | None
    cmd: str | None
    #: The human view (``cli.human.View``) when one is drawn, else None.
    view: Any


class CommandResult:
    """What a command reports: its data, and the error it ends with (e.g. `stage verify`, a failed run)."""

    def __init__(self, data: Any, error: NoetherError | None = None) -> None:
        self.data = data
        self.error = error


#: ``--registry URL`` of this invocation (``registry_cmds.registry_url`` falls back to the settings).
registry_flag: str | None = None


def backend(args: argparse.Namespace) -> Backend:
    """The live daemon's backend (``--socket``, ``$NOETHER_SOCKET``, the default
    socket), or the embedded one (``--local``, or no daemon). Embedded, graph
    resolution in this process falls back to the configured registry; through a
    daemon the daemon resolves, and this process loads none of it."""
    from noether_nix.backend import select

    found: Backend | None = getattr(args, "_backend", None)
    if found is None:
        found = select(local=bool(getattr(args, "local", False)), socket=getattr(args, "socket", None))
        if found.mode == "local":
            from noether_nix.cli.registry_cmds import install_source

            install_source()
        args._backend = found
    return found


def read_json_file(path: str, *, what: str = "file") -> Any:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise NoetherError("file_not_found", f"{what} not found", path=path) from None
    except OSError as e:
        raise NoetherError("io_error", f"cannot read {what}: {e.strerror}", path=path) from None
    from noether_nix import jsontext

    try:
        return jsontext.decode(raw)
    except jsontext.JSONTextError as e:
        raise NoetherError("invalid_json", f"{what} is not valid JSON: {e}", path=path) from None


def parse_json_arg(text: str, *, what: str) -> Any:
    from noether_nix import jsontext

    try:
        return jsontext.decode(text)
    except jsontext.JSONTextError as e:
        raise NoetherError("invalid_json", f"{what} is not valid JSON: {e}", path=what) from None
