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
    p.add_argument("--executor", choices=["local", "remote"], help="where sandboxed stages run (default: local)")
    p.add_argument("--reapi", metavar="URL", help="the REAPI cluster for --executor remote (grpc://host:port)")
    p.add_argument("--reapi-instance", metavar="NAME", help="its instance name (default: the empty one)")
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
    if args.executor or args.reapi or args.reapi_instance is not None:
        from noether_nix.engine.config import EngineConfig
        from noether_nix.remote.settings import RemoteSettings

        remote = config.engine.remote
        if args.reapi or args.reapi_instance is not None:
            base = remote or RemoteSettings(url=args.reapi or "")
            remote = msgspec.structs.replace(base, url=args.reapi or base.url,
                                             instance=base.instance if args.reapi_instance is None
                                             else args.reapi_instance)
        fields = {f: getattr(config.engine, f) for f in EngineConfig.__struct_fields__}
        config.engine = EngineConfig(**{**fields, "executor": args.executor or config.engine.executor,
                                        "remote": remote})
    return run_daemon(config)
