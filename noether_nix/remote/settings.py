"""``executor: remote`` settings (plain data: loading them needs no gRPC)."""

from __future__ import annotations

import msgspec


class RemoteSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where the REAPI cluster is and how the remote executor uses it."""

    #: grpc://host:port, grpcs://host:port (TLS) or unix:/path.
    url: str
    instance: str = ""
    #: PEM files: the roots to verify the server, and a client certificate and key for mTLS.
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    #: A file holding a bearer token sent with every call.
    token_file: str | None = None
    #: The sandbox profile Actions are encoded for (workers must run the same).
    profile: str = "default"
    #: How long an Action may wait for a worker that offers its platform.
    queue_timeout_s: float = 600.0
    #: How long to keep following an operation through a server that went away.
    reconnect_s: float = 60.0
