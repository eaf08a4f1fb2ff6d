"""``noether daemon``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import msgspec

from noether_nix.errors import NoetherError


def register(sub: Any) -> None:
    p = sub.add_parser("daemon", help="serve the engine on a Unix socket")
    p.add_argument("--socket", help="socket path (default $XDG_RUNTIME_DIR/noether.sock or /run/noether/noether.sock)")
    p.add_argument("--config", help="daemon configuration (JSON)")
    p.set_defaults(handler=None, raw_handler=cmd_daemon, command="daemon")


def cmd_daemon(args: argparse.Namespace) -> int:
    from noether_nix.server.daemon import DaemonConfig, run_daemon

    config = DaemonConfig()
    if args.config:
        try:
            config = msgspec.json.decode(Path(args.config).read_bytes(), type=DaemonConfig)
        except OSError as e:
            raise NoetherError("config_unreadable", f"cannot read config: {e.strerror}", path=args.config) from None
        except (msgspec.ValidationError, msgspec.DecodeError) as e:
            raise NoetherError("invalid_config", f"invalid config: {e}", path=args.config) from None
    if args.socket:
        config.socket = args.socket
    return run_daemon(config)
