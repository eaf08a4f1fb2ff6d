"""Daemon or embedded: which engine a store / graph command talks to.

``--local`` (or ``$NOETHER_LOCAL``) forces embedded mode. ``--socket PATH``
names a daemon that must answer (else ``daemon_unreachable``). Otherwise
``$NOETHER_SOCKET`` or the default socket is used when a daemon is live,
and the command runs embedded when none is.
"""

from __future__ import annotations

import os
from urllib.parse import quote

from noether_nix.client import Client, daemon_socket_if_live
from noether_nix.errors import NoetherError

_local = False
_socket: str | None = None


def configure(*, local: bool = False, socket: str | None = None) -> None:
    global _local, _socket
    _local, _socket = local, socket


def daemon(*, timeout: float | None = 300) -> Client | None:
    """A client for the live daemon, or None to run embedded.

    ``timeout=None`` is for commands that may legitimately take long (builds).
    """
    if _local or os.environ.get("NOETHER_LOCAL"):
        return None
    if _socket is not None:
        if daemon_socket_if_live(_socket) is None:
            raise NoetherError("daemon_unreachable", "no daemon is serving this socket", path=_socket,
                               hint="start one with `noether daemon --socket PATH`, or use --local")
        return Client(_socket, timeout=timeout)
    sock = daemon_socket_if_live(os.environ.get("NOETHER_SOCKET"))
    return Client(sock, timeout=timeout) if sock else None


def seg(ref: str) -> str:
    """``ref`` as one URL path segment."""
    return quote(ref, safe="")
