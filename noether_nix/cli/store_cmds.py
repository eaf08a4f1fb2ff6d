"""``noether store …``: import / export upstream's store.json, stats.

The CLI reads and writes the files; the live daemon (or the embedded
store) computes the data (``noether_nix.service.store``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from noether_nix.cli import remote
from noether_nix.cli.common import open_store, read_json_file
from noether_nix.errors import NoetherError
from noether_nix.service import store as svc


def register(sub: Any) -> None:
    store = sub.add_parser("store", help="the stage store").add_subparsers(dest="store_cmd", required=True)
    p = store.add_parser("import", help="import an upstream store.json ({\"stages\": [...]})")
    p.add_argument("file")
    p.set_defaults(handler=cmd_import, command="store import")
    p = store.add_parser("export", help="export the store as upstream store.json")
    p.add_argument("--output", "-o", help="write store.json to this file instead of the envelope")
    p.set_defaults(handler=cmd_export, command="store export")
    p = store.add_parser("stats", help="counts by lifecycle")
    p.set_defaults(handler=cmd_stats, command="store stats")


def cmd_import(args: argparse.Namespace) -> Any:
    doc = read_json_file(args.file, what="store file")
    client = remote.daemon()
    if client is not None:
        return client.call("POST", "/v1/store/import", {"doc": doc, "source": args.file})
    return svc.import_stages(open_store(), doc, source=args.file)


def cmd_export(args: argparse.Namespace) -> Any:
    client = remote.daemon()
    doc = client.call("GET", "/v1/store/export") if client is not None else svc.export_store(open_store())
    if not args.output:
        return doc
    try:
        Path(args.output).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    except OSError as e:
        raise NoetherError("write_failed", f"cannot write {args.output}: {e.strerror or e}", path=args.output,
                           exit_code=1) from None
    return svc.export_written(doc, args.output)


def cmd_stats(args: argparse.Namespace) -> Any:
    client = remote.daemon()
    if client is not None:
        return client.call("GET", "/v1/store/stats")
    return svc.store_stats(open_store())
