"""The Pure part of upstream module ``io``: adapters over an HTTP response record.

The other io stages touch files, the network or standard streams and run
in a sandbox (``sandboxed/``).
"""

from __future__ import annotations

from typing import Any

from noether_nix.stdlib._shapes import Impl, StageFailure, need_record, registrar, show

IMPLS: dict[str, Impl] = {}
stage = registrar(IMPLS)


@stage("http_body")
def http_body(value: Any) -> Any:
    body = need_record(value, "body", what="input (an HTTP response record)")["body"]
    if not isinstance(body, str):
        raise StageFailure(f"field 'body' of the HTTP response must be text, got {show(body)}")
    return body


@stage("http_status")
def http_status(value: Any) -> Any:
    status = need_record(value, "status", what="input (an HTTP response record)")["status"]
    if isinstance(status, bool) or not isinstance(status, (int, float)):
        raise StageFailure(f"field 'status' of the HTTP response must be a number, got {show(status)}")
    return float(status)  # an f64 upstream: 200.0
