"""``noether daemon``."""

from __future__ import annotations

import argparse
from typing import Any

import msgspec


def register(sub: Any) -> None:
    p = sub.add_parser("daemon", help="serve the engine on a Unix socket")
    p.add_argument("--socket", help="socket path (default: the settings' socket, $NOETHER_SOCKET, "
                   "$XDG_RUNTIME_DIR/noether.sock or /run/noether/noether.sock)")
    p.add_argument("--config", help="settings file (JSON, or TOML by its .toml suffix); default $NOETHER_CONFIG")
    p.set_defaults(handler=None, raw_handler=cmd_daemon, command="daemon")


def cmd_daemon(args: argparse.Namespace) -> int:
    from noether_nix.server.daemon import run_daemon
    from noether_nix.settings import configure, settings

    config = configure(args.config) if args.config else settings()
    if args.socket:
        config = msgspec.structs.replace(config, socket=args.socket)
    return run_daemon(config)
