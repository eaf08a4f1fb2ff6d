"""The HTTP layer without I/O: requests in, responses out, with h11.

``RequestReader`` feeds bytes into an h11 connection and yields one
complete request (body capped); ``Response`` helpers produce the bytes of
an ACLI-envelope answer or of a streamed NDJSON body.
"""

from __future__ import annotations

import json
from typing import Any

import h11
import msgspec

from noether_nix import __version__


class Request(msgspec.Struct):
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


class ProtocolError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class RequestReader:
    def __init__(self, conn: h11.Connection, max_body: int) -> None:
        self.conn = conn
        self.max_body = max_body

    def next_event(self) -> Any:
        try:
            return self.conn.next_event()
        except h11.RemoteProtocolError as e:
            raise ProtocolError(400, "bad_request", f"malformed HTTP: {e}") from None

    def feed(self, data: bytes) -> None:
        self.conn.receive_data(data)


def request_from(head: h11.Request, body: bytes) -> Request:
    return Request(
        method=head.method.decode(),
        target=head.target.decode(),
        headers={k.decode().lower(): v.decode() for k, v in head.headers},
        body=body,
    )


def envelope(command: str, data: Any = None, error: dict[str, Any] | None = None, duration_ms: int = 0) -> bytes:
    doc: dict[str, Any] = {"ok": error is None, "command": command}
    if error is None:
        doc["data"] = data
    else:
        doc["error"] = error
    doc["meta"] = {"duration_ms": duration_ms, "version": __version__}
    return json.dumps(doc, ensure_ascii=False).encode() + b"\n"


def response_head(status: int, content_type: str, length: int | None = None) -> h11.Response:
    headers = [("content-type", content_type), ("server", f"noether-nix/{__version__}")]
    if length is not None:
        headers.append(("content-length", str(length)))
    else:
        headers.append(("transfer-encoding", "chunked"))
    return h11.Response(status_code=status, headers=headers)


def ndjson(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"
