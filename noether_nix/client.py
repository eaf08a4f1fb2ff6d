"""A small synchronous client for the daemon's Unix socket (stdlib http.client)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
from collections.abc import Iterator
from typing import Any

from noether_nix.errors import NoetherError
from noether_nix.paths import default_socket


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None = 300) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


def _send(conn: http.client.HTTPConnection, method: str, target: str, body: bytes | None) -> None:
    # The daemon may answer before reading the whole body (413 for a body over
    # its cap) and close: that answer is still there for getresponse to read.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        conn.request(method, target, body=body, headers={"content-type": "application/json"})


class Client:
    def __init__(self, socket_path: str, timeout: float | None = 300) -> None:
        self.path = socket_path
        self.timeout = timeout

    def request(self, method: str, target: str, body: Any = None) -> tuple[int, Any]:
        conn = _UnixConnection(self.path, self.timeout)
        try:
            payload = None if body is None else json.dumps(body).encode()
            _send(conn, method, target, payload)
            resp = conn.getresponse()
            raw = resp.read()
            ctype = resp.getheader("content-type", "")
            return resp.status, json.loads(raw) if ctype.startswith("application/json") else raw.decode()
        finally:
            conn.close()

    def call(self, method: str, target: str, body: Any = None) -> Any:
        """The ``data`` of the daemon's envelope; its error is raised as the ``NoetherError`` it was."""
        try:
            status, doc = self.request(method, target, body)
        except (OSError, http.client.HTTPException) as e:
            raise NoetherError("daemon_unreachable", f"lost the daemon during {method} {target}: {e}",
                               path=self.path) from None
        if isinstance(doc, dict) and doc.get("ok") is True:
            return doc.get("data")
        raise _envelope_error(status, doc, self.path)

    def run(self, graph: Any, input: Any = None, options: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Stream the run's NDJSON events; the last one is ``{"event": "result", …}``."""
        conn = _UnixConnection(self.path, self.timeout)
        try:
            body = json.dumps({"graph": graph, "input": input, "options": options or {}}).encode()
            _send(conn, "POST", "/v1/runs", body)
            resp = conn.getresponse()
            if resp.status != 200:
                raw = resp.read()
                try:
                    doc = json.loads(raw)
                except ValueError:
                    doc = raw.decode(errors="replace")
                raise _envelope_error(resp.status, doc, self.path)
            while line := resp.readline():
                yield json.loads(line)
        finally:
            conn.close()


def _envelope_error(status: int, doc: Any, path: str) -> NoetherError:
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        return NoetherError.from_dict(doc["error"])
    return NoetherError("daemon_error", f"the daemon answered {status} without an envelope", path=path)


def daemon_socket_if_live(explicit: str | None = None) -> str | None:
    """``explicit``, else $NOETHER_SOCKET, else the default socket, if a daemon accepts on it."""
    path = explicit or os.environ.get("NOETHER_SOCKET") or default_socket()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError:
        return None
    finally:
        s.close()
    return path


class TrioClient:
    """The same API on trio, speaking HTTP/1.1 with h11 (for async programs)."""

    def __init__(self, socket_path: str) -> None:
        self.path = socket_path

    async def _exchange(self, method: str, target: str, body: Any) -> Any:
        import h11
        import trio

        stream = await trio.open_unix_socket(self.path)
        conn = h11.Connection(h11.CLIENT)
        payload = b"" if body is None else json.dumps(body).encode()
        headers = [("host", "localhost"), ("content-type", "application/json"),
                   ("content-length", str(len(payload))), ("connection", "close")]
        await stream.send_all(conn.send(h11.Request(method=method, target=target, headers=headers)) or b"")
        await stream.send_all(conn.send(h11.Data(data=payload)) or b"")
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
        return stream, conn

    async def _events(self, stream: Any, conn: Any) -> Any:
        import h11

        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
                continue
            if isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return
            yield event

    async def request(self, method: str, target: str, body: Any = None) -> tuple[int, Any]:
        import h11

        stream, conn = await self._exchange(method, target, body)
        status, data = 0, bytearray()
        async with stream:
            async for event in self._events(stream, conn):
                if isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    data.extend(event.data)
        return status, json.loads(data) if data.strip().startswith(b"{") else data.decode()

    async def run(self, graph: Any, input: Any = None, options: dict[str, Any] | None = None) -> Any:
        """Async-iterate the run's events as they stream."""
        import h11

        stream, conn = await self._exchange("POST", "/v1/runs", {"graph": graph, "input": input,
                                                                 "options": options or {}})
        buf = bytearray()
        async with stream:
            async for event in self._events(stream, conn):
                if isinstance(event, h11.Data):
                    buf.extend(event.data)
                    while b"\n" in buf:
                        line, _, rest = bytes(buf).partition(b"\n")
                        buf[:] = rest
                        yield json.loads(line)
