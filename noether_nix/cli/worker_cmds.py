"""``noether worker`` (a Remote Workers API bot) and ``noether launch`` (the
trusted launcher an REAPI Action runs, under our worker or any other)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from noether_nix.errors import NoetherError


def register(sub: Any) -> None:
    p = sub.add_parser("worker", help="serve stage calls from an REAPI cluster (Remote Workers API)")
    p.add_argument("--reapi", required=True, metavar="URL", help="grpc://host:port, grpcs://host:port or unix:/path")
    p.add_argument("--instance", default="", help="REAPI instance name (default: the empty one)")
    p.add_argument("--tls-ca", help="PEM roots to verify the server (grpcs://; default: the system's)")
    p.add_argument("--tls-cert", help="client certificate (PEM) for mutual TLS")
    p.add_argument("--tls-key", help="client key (PEM) for mutual TLS")
    p.add_argument("--token-file", help="file holding a bearer token sent with every call")
    p.add_argument("--bot-id", default="", help="this bot's id (default: hostname-pid)")
    p.add_argument("--concurrency", type=int, default=1, help="leases run at once (default 1)")
    p.add_argument("--network", action="store_true", help="grant the network to stages that declare Network")
    p.add_argument("--allow-read", action="append", default=[], metavar="DIR",
                   help="a directory FsRead effects may bind (repeatable)")
    p.add_argument("--allow-write", action="append", default=[], metavar="DIR",
                   help="a directory FsWrite effects may bind (repeatable)")
    p.add_argument("--capability", action="append", default=[], metavar="NAME",
                   help="a capability this worker holds, e.g. llm:MODEL (repeatable)")
    p.add_argument("--runtime", action="append", metavar="LANG",
                   help="a runtime to offer (repeatable; default: every one with a host interpreter)")
    p.add_argument("--profile", default="default", help="sandbox profile (must match the clients')")
    p.add_argument("--run-as", metavar="UID[:GID]", help="host user the sandboxes run as")
    p.set_defaults(handler=None, raw_handler=cmd_worker, command="worker")

    lp = sub.add_parser("launch", help="run the stage call in the current directory (an REAPI Action's command)")
    lp.add_argument("--protocol", required=True, help="launcher protocol version")
    lp.set_defaults(handler=None, raw_handler=cmd_launch, command="launch")


def _run_as(value: str | None) -> tuple[int | None, int | None]:
    if not value:
        return None, None
    uid, _, gid = value.partition(":")
    try:
        return int(uid), int(gid or uid)
    except ValueError:
        raise NoetherError("usage", f"--run-as takes UID[:GID], not {value!r}", exit_code=2) from None


def cmd_worker(args: argparse.Namespace) -> int:
    import sys

    import structlog
    import trio

    from noether_nix.remote.client import Endpoint
    from noether_nix.remote.launcher import WorkerGrants
    from noether_nix.remote.worker import WorkerSettings, run_worker

    if args.concurrency < 1:
        raise NoetherError("usage", "--concurrency must be at least 1", exit_code=2)
    for d in [*args.allow_read, *args.allow_write]:
        if not os.path.isabs(d):
            raise NoetherError("usage", f"{d!r} must be an absolute path", exit_code=2)
    uid, gid = _run_as(args.run_as)
    grants = WorkerGrants(profile=args.profile, network=args.network, allow_read=args.allow_read,
                          allow_write=args.allow_write, capabilities=args.capability, run_as_uid=uid, run_as_gid=gid)
    endpoint = Endpoint(url=args.reapi, instance=args.instance, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
                        tls_key=args.tls_key, token_file=args.token_file)
    endpoint.target()  # a bad URL is a usage error before anything starts
    settings = WorkerSettings(endpoint=endpoint, bot_id=args.bot_id, concurrency=args.concurrency, grants=grants,
                              runtimes=args.runtime)
    # One JSON object a line on stderr, like the daemon's log.
    structlog.configure(processors=[structlog.processors.TimeStamper(fmt="iso"),
                                    structlog.processors.add_log_level, structlog.processors.format_exc_info,
                                    structlog.processors.JSONRenderer()],
                        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    try:
        trio.run(run_worker, settings)
    except KeyboardInterrupt:
        return 130
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    from noether_nix.remote.action import PROTOCOL
    from noether_nix.remote.launcher import main

    if args.protocol != str(PROTOCOL):
        raise NoetherError("remote_bad_action", f"this launcher speaks protocol {PROTOCOL}, not {args.protocol}",
                           exit_code=2)
    return main([])
