"""The HTTP layer's data, without I/O: requests in, envelopes and NDJSON out."""

from __future__ import annotations

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


def _text(raw: bytes, what: str) -> str:
    """Header bytes as text: HTTP allows only ASCII there, anything else is the client's error."""
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(400, "bad_request", f"the request's {what} is not ASCII") from None


def request_from(head: h11.Request, body: bytes) -> Request:
    return Request(
        method=_text(head.method, "method"),
        target=_text(head.target, "target"),
        headers={_text(k, "header names").lower(): _text(v, "header values") for k, v in head.headers},
        body=body,
    )


_encoder = msgspec.json.Encoder()


def json_line(obj: Any) -> bytes:
    """One JSON document and a newline (NDJSON). Text with lone surrogates
    raises (UnicodeEncodeError); values are checked for NaN and the like
    where they enter (a stage's output), not here."""
    return _encoder.encode(obj) + b"\n"


def envelope(command: str, data: Any = None, error: dict[str, Any] | None = None, duration_ms: int = 0) -> bytes:
    doc: dict[str, Any] = {"ok": error is None, "command": command}
    if error is None:
        doc["data"] = data
    else:
        doc["error"] = error
    doc["meta"] = {"duration_ms": duration_ms, "version": __version__}
    return json_line(doc)


def response_head(status: int, content_type: str, length: int | None = None) -> h11.Response:
    headers = [("content-type", content_type), ("server", f"noether-nix/{__version__}")]
    if length is not None:
        headers.append(("content-length", str(length)))
    else:
        headers.append(("transfer-encoding", "chunked"))
    return h11.Response(status_code=status, headers=headers)
