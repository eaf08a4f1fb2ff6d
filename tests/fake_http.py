"""Stand-in HTTP servers for tests: a handler base that keeps quiet and answers a body (or
JSON) with its length, and a server on 127.0.0.1 in a daemon thread, closed by the test
(``serve``) or by the ``with`` block (``served``)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing (the test's output stays its own)."""

    def send_body(self, status: int, body: bytes, content_type: str = "application/octet-stream",
                  headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: int, doc: Any) -> None:
        self.send_body(status, json.dumps(doc).encode(), "application/json")

    def log_message(self, *args: Any) -> None:
        pass


def serve(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """``handler`` served on a free loopback port, in a daemon thread."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@contextlib.contextmanager
def served(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """``serve(handler)`` for the block: its base URL (``http://127.0.0.1:PORT``), then shut down."""
    server = serve(handler)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
