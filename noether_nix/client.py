"""The HTTP client for the daemon's Unix socket.

One client for every caller: the CLI's daemon backend, tests, and any
program (an async one can call it from a worker thread). It imports
neither trio nor the engine nor msgspec — nor ``http.client``, whose
imports (ssl, email) cost more than a warm run — so talking to a daemon stays cheap:
one HTTP/1.1 exchange per connection (``Connection: close``), the answer
read by its ``Content-Length``, chunk by chunk, or to the end.
"""

from __future__ import annotations

import contextlib
import json
import socket

from noether_nix import jsontext
from noether_nix.errors import NoetherError
from noether_nix.settings_view import default_socket

TYPE_CHECKING = False  # no typing import on a client's path (see errors.py)
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

#: Bounds on what the client reads before the body: a status line and headers.
_MAX_HEAD = 64 * 1024


class HttpError(OSError):
    """The daemon's answer is not HTTP this client can read."""


class _Response:
    """One answer, read from a connected socket: status, headers, then the body as it comes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        head = self._until(b"\r\n\r\n", _MAX_HEAD)
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise HttpError(f"not an HTTP status line: {lines[0][:80]!r}")
        self.status = int(parts[1])
        self.headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                self.headers[name.strip().lower()] = value.strip()
        self.chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        length = self.headers.get("content-length")
        self.left = int(length) if length is not None and length.isdigit() and not self.chunked else None
        self.done = False

    def getheader(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def _until(self, mark: bytes, limit: int) -> bytes:
        while (i := self.buffer.find(mark)) < 0:
            if len(self.buffer) > limit:
                raise HttpError("an HTTP line is too long")
            if not self._fill():
                raise HttpError("the connection closed in the middle of an answer")
        line, self.buffer = self.buffer[:i], self.buffer[i + len(mark):]
        return line

    def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if not self._fill():
                raise HttpError("the connection closed in the middle of an answer")
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def read_some(self) -> bytes:
        """The next piece of the body; b"" at its end."""
        if self.done:
            return b""
        if self.chunked:
            size = self._until(b"\r\n", 1024).split(b";")[0].strip()
            try:
                n = int(size, 16)
            except ValueError:
                raise HttpError(f"bad chunk size {size[:20]!r}") from None
            if n == 0:
                self.done = True
                return b""
            data = self._take(n)
            self._take(2)
            return data
        if self.left is not None:
            if self.left == 0:
                self.done = True
                return b""
            if not self.buffer and not self._fill():
                raise HttpError("the connection closed in the middle of an answer")
            data, self.buffer = self.buffer[: self.left], self.buffer[self.left:]
            self.left -= len(data)
            return data
        if not self.buffer and not self._fill():
            self.done = True
            return b""
        data, self.buffer = self.buffer, b""
        return data

    def read(self) -> bytes:
        parts = []
        while piece := self.read_some():
            parts.append(piece)
        return b"".join(parts)

    def lines(self) -> Iterator[bytes]:
        rest = b""
        while piece := self.read_some():
            rest += piece
            *done, rest = rest.split(b"\n")
            yield from (line for line in done if line.strip())
        if rest.strip():
            yield rest


def _connect(path: str, timeout: float | None) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(path)
    except BaseException:
        s.close()
        raise
    return s


def _send(sock: socket.socket, method: str, target: str, body: bytes | None) -> None:
    head = [f"{method} {target} HTTP/1.1", "Host: localhost", "Connection: close",
            "Accept-Encoding: identity"]
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b"")
    # The daemon may answer before reading the whole body (413 for a body over
    # its cap) and close: that answer is still there to be read.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(data)


def _decode(raw: bytes, ctype: str) -> Any:
    if ctype.startswith("application/json"):
        try:
            return json.loads(raw)
        except ValueError:
            pass
    return raw.decode("utf-8", "replace")


class Client:
    def __init__(self, socket_path: str, timeout: float | None = 300) -> None:
        self.path = socket_path
        self.timeout = timeout

    def request(self, method: str, target: str, body: Any = None, *,
                timeout: float | bool | None = False) -> tuple[int, Any]:
        """One exchange: the status and the decoded answer (JSON, else text).
        ``timeout`` overrides the client's (``None``: wait as long as it takes)."""
        sock = _connect(self.path, self.timeout if timeout is False else timeout)
        try:
            _send(sock, method, target, None if body is None else json.dumps(body).encode())
            resp = _Response(sock)
            return resp.status, _decode(resp.read(), resp.getheader("content-type"))
        finally:
            sock.close()

    def call(self, method: str, target: str, body: Any = None, *, timeout: float | bool | None = False) -> Any:
        """The ``data`` of the daemon's envelope; its error is raised as the ``NoetherError`` it was."""
        try:
            status, doc = self.request(method, target, body, timeout=timeout)
        except OSError as e:
            raise NoetherError("daemon_unreachable", f"lost the daemon during {method} {target}: {e}",
                               path=self.path) from None
        if isinstance(doc, dict) and doc.get("ok") is True:
            return doc.get("data")
        raise envelope_error(status, doc, self.path)

    def stream(self, method: str, target: str, body: Any = None, *,
               timeout: float | bool | None = False) -> Iterator[dict[str, Any]]:
        """An NDJSON answer, one decoded line at a time; an error answer is raised."""
        sock = _connect(self.path, self.timeout if timeout is False else timeout)
        try:
            _send(sock, method, target, None if body is None else json.dumps(body).encode())
            resp = _Response(sock)
            if resp.status != 200:
                raise envelope_error(resp.status, _decode(resp.read(), resp.getheader("content-type")), self.path)
            for line in resp.lines():
                yield stream_line(line, self.path)
        finally:
            sock.close()

    def run(self, graph: Any, input: Any = None, options: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Stream a run's NDJSON events; the last one is its ``run_finished``."""
        return self.stream("POST", "/v1/runs", {"graph": graph, "input": input, "options": options or {}},
                           timeout=None)


def stream_line(line: bytes, path: str) -> Any:
    """One NDJSON line, strictly (no NaN, no lone surrogates: what the daemon never sends)."""
    try:
        return jsontext.decode(line)
    except jsontext.JSONTextError as e:
        raise NoetherError("daemon_error", f"the daemon sent a line that is not JSON ({e}): {line[:80]!r}",
                           path=path, exit_code=3) from None


def envelope_error(status: int, doc: Any, path: str) -> NoetherError:
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        return NoetherError.from_dict(doc["error"])
    return NoetherError("daemon_error", f"the daemon answered {status} without an envelope", path=path)


def daemon_socket_if_live(explicit: str | None = None) -> str | None:
    """``explicit``, else the settings' socket ($NOETHER_SOCKET) or the default one, if a daemon accepts on it."""
    path = explicit or default_socket()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError:
        return None
    finally:
        s.close()
    return path
