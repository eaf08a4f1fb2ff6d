"""The ACLI envelope every command prints (spec §11.1, with real values).

Unlike upstream, ``command`` names the real subcommand and ``duration_ms``
is measured; ``error.code`` is the stable machine code of the failure; and
a failed command's envelope goes to stdout too (with its ``data`` where it
has some), so stdout always carries exactly one envelope.
"""

from __future__ import annotations

import json
import sys
import time

from noether_nix import __version__
from noether_nix.errors import NoetherError

TYPE_CHECKING = False  # no typing import on the CLI's entry (see errors.py)
if TYPE_CHECKING:
    from typing import Any, TextIO


class Invocation:
    def __init__(self, command: str) -> None:
        self.command = command
        self.started = time.monotonic()

    def meta(self) -> dict[str, Any]:
        return {"duration_ms": int((time.monotonic() - self.started) * 1000), "version": __version__}


def ok_envelope(inv: Invocation, data: Any) -> dict[str, Any]:
    return {"ok": True, "command": inv.command, "data": data, "meta": inv.meta()}


def error_envelope(inv: Invocation, err: NoetherError, data: Any = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"ok": False, "command": inv.command, "error": err.to_dict()}
    if data is not None:
        doc["data"] = data
    doc["meta"] = inv.meta()
    return doc


def dump(doc: Any, stream: TextIO | None = None) -> None:
    """One envelope and a newline: indented for a terminal (``--json`` read by a person), one compact
    line for a pipe or a file (what a program reads; a large value's indentation was a third of it)."""
    out = stream or sys.stdout
    try:
        pretty = out.isatty()
    except (AttributeError, ValueError):  # a closed or file-like stream without a terminal
        pretty = False
    if pretty:
        text = json.dumps(doc, indent=2, ensure_ascii=False)
    else:
        text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    out.write(text + "\n")
    out.flush()


def wants_human(argv: list[str], *, human: bool | None = None, json_flag: bool | None = None) -> bool:
    """The human view: asked for with ``--human``, or stdout is a terminal and ``--json`` was not given."""
    human = "--human" in argv if human is None else human
    json_flag = "--json" in argv if json_flag is None else json_flag
    if human:
        return True
    return not json_flag and sys.stdout.isatty()
