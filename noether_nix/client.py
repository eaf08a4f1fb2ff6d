"""The HTTP client for the daemon's Unix socket (stdlib ``http.client``).

One client for every caller: the CLI's daemon backend, tests, and any
program (an async one can call it from a worker thread). It imports
neither trio nor the engine, so talking to a daemon stays cheap.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
from collections.abc import Iterator
from typing import Any

import msgspec

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
        conn = _UnixConnection(self.path, self.timeout if timeout is False else timeout)
        try:
            payload = None if body is None else json.dumps(body).encode()
            _send(conn, method, target, payload)
            resp = conn.getresponse()
            return resp.status, _decode(resp.read(), resp.getheader("content-type", ""))
        finally:
            conn.close()

    def call(self, method: str, target: str, body: Any = None, *, timeout: float | bool | None = False) -> Any:
        """The ``data`` of the daemon's envelope; its error is raised as the ``NoetherError`` it was."""
        try:
            status, doc = self.request(method, target, body, timeout=timeout)
        except (OSError, http.client.HTTPException) as e:
            raise NoetherError("daemon_unreachable", f"lost the daemon during {method} {target}: {e}",
                               path=self.path) from None
        if isinstance(doc, dict) and doc.get("ok") is True:
            return doc.get("data")
        raise envelope_error(status, doc, self.path)

    def stream(self, method: str, target: str, body: Any = None, *,
               timeout: float | bool | None = False) -> Iterator[dict[str, Any]]:
        """An NDJSON answer, one decoded line at a time; an error answer is raised."""
        conn = _UnixConnection(self.path, self.timeout if timeout is False else timeout)
        try:
            _send(conn, method, target, None if body is None else json.dumps(body).encode())
            resp = conn.getresponse()
            if resp.status != 200:
                raise envelope_error(resp.status, _decode(resp.read(), resp.getheader("content-type", "")),
                                     self.path)
            while line := resp.readline():
                yield stream_line(line, self.path)
        finally:
            conn.close()

    def run(self, graph: Any, input: Any = None, options: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Stream a run's NDJSON events; the last one is its ``run_finished``."""
        return self.stream("POST", "/v1/runs", {"graph": graph, "input": input, "options": options or {}},
                           timeout=None)


def stream_line(line: bytes, path: str) -> Any:
    """One NDJSON line, strictly (no NaN, no lone surrogates: what the daemon never sends)."""
    try:
        return msgspec.json.decode(line)
    except (msgspec.DecodeError, RecursionError) as e:
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
