"""``noether store …``: import / export upstream's store.json, stats.

The CLI reads and writes the files; the backend computes the data.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from noether_nix.cli.common import backend, read_json_file
from noether_nix.errors import NoetherError


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    store = sub.add_parser("store", help="the stage store", parents=[common]).add_subparsers(
        dest="store_cmd", required=True, metavar="SUBCOMMAND")
    p = store.add_parser("import", help="import an upstream store.json ({\"stages\": [...]})", parents=[common])
    p.add_argument("file")
    p.set_defaults(handler=cmd_import, command="store import")
    p = store.add_parser("export", help="export the store as upstream store.json", parents=[common])
    p.add_argument("--output", "-o", help="write store.json to this file instead of the envelope")
    p.set_defaults(handler=cmd_export, command="store export")
    p = store.add_parser("stats", help="counts by lifecycle", parents=[common])
    p.set_defaults(handler=cmd_stats, command="store stats")


def cmd_import(args: argparse.Namespace) -> Any:
    return backend(args).store_import(read_json_file(args.file, what="store file"), args.file)


def cmd_export(args: argparse.Namespace) -> Any:
    doc = backend(args).store_export()
    if not args.output:
        return doc
    try:
        Path(args.output).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    except OSError as e:
        raise NoetherError("write_failed", f"cannot write {args.output}: {e.strerror or e}", path=args.output) from None
    return {"path": args.output, "count": len(doc["stages"])}


def cmd_stats(args: argparse.Namespace) -> Any:
    return backend(args).store_stats()
