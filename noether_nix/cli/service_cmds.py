"""``noether service install | uninstall``: the daemon as a systemd service (root)."""

from __future__ import annotations

import argparse
import pwd
from typing import Any

from noether_nix.errors import NoetherError


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("service", help="install or remove the systemd service (as root)", parents=[common])
    ssub = p.add_subparsers(dest="service_cmd", required=True, parser_class=type(p), metavar="SUBCOMMAND")
    i = ssub.add_parser("install", help="install the units, accounts, tmpfiles and a default /etc/noether/daemon.json",
                        parents=[common])
    i.add_argument("--user", default="noether", help="account the daemon runs as (default: noether, created)")
    i.add_argument("--socket-group", default="noether-users",
                   help="group whose members may use the socket (default: noether-users, created)")
    i.set_defaults(handler=cmd_install, command="service install")
    u = ssub.add_parser("uninstall", help="remove what `service install` added (the store stays)", parents=[common])
    u.set_defaults(handler=cmd_uninstall, command="service uninstall")
    d = ssub.add_parser("delegate", help="(run by noether.service as root) hand the service its cgroup v1 "
                        "memory and pids cgroups", parents=[common])
    d.add_argument("--user", required=True)
    d.set_defaults(handler=cmd_delegate, command="service delegate")


def cmd_install(args: argparse.Namespace) -> Any:
    from noether_nix.server.install import InstallOptions, apply_install

    return apply_install(InstallOptions(user=args.user, socket_group=args.socket_group))


def cmd_uninstall(args: argparse.Namespace) -> Any:
    from noether_nix.server.install import uninstall

    return uninstall()


def cmd_delegate(args: argparse.Namespace) -> Any:
    from noether_nix.sandbox.delegation import grant_v1

    try:
        pw = pwd.getpwnam(args.user)
    except KeyError:
        raise NoetherError("usage", f"no user named {args.user!r}", path="--user") from None
    return {"granted": grant_v1(pw.pw_uid, pw.pw_gid), "user": args.user}
