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
    p.add_argument("--executor", choices=["local", "remote"], help="where sandboxed stages run (default: local)")
    p.add_argument("--reapi", metavar="URL", help="the REAPI cluster for --executor remote (grpc://host:port)")
    p.add_argument("--reapi-instance", metavar="NAME", help="its instance name (default: the empty one)")
    p.set_defaults(handler=None, raw_handler=cmd_daemon, command="daemon")


def cmd_daemon(args: argparse.Namespace) -> int:
    from noether_nix.server.daemon import run_daemon
    from noether_nix.settings import configure, settings

    config = configure(args.config) if args.config else settings()
    if args.socket:
        config = msgspec.structs.replace(config, socket=args.socket)
    if args.executor or args.reapi or args.reapi_instance is not None:
        engine = config.engine
        remote = engine.remote
        if args.reapi:
            remote = msgspec.structs.replace(remote, url=args.reapi)
        if args.reapi_instance is not None:
            remote = msgspec.structs.replace(remote, instance=args.reapi_instance)
        engine = msgspec.structs.replace(engine, executor=args.executor or engine.executor, remote=remote)
        config = msgspec.structs.replace(config, engine=engine)
    return run_daemon(config)
