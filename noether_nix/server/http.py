"""HTTP/1.1 framing on one connection: bounded reads, and one send sequence.

``HttpConnection`` pairs a trio stream with an h11 connection. Reading
returns one complete ``Request`` (head within the header timeout, body
under the cap) or raises ``ProtocolError`` with the status to answer.
Sending goes through one state machine — head, data…, end — whether the
answer is a single envelope or a stream of NDJSON lines.
"""

from __future__ import annotations

import contextlib
import enum
from typing import Any

import h11
import trio

from noether_nix.server.protocol import ProtocolError, Request, request_from, response_head

#: Body pieces larger than this go to the socket as they are, in a send of their own.
PASS_THROUGH_BYTES = 64 * 1024


class SendState(enum.Enum):
    IDLE = "idle"  # nothing of this answer sent yet
    STREAMING = "streaming"  # head sent, body going out
    DONE = "done"  # the whole answer went out


class HttpConnection:
    def __init__(self, stream: trio.SocketStream, *, max_body: int, header_timeout_s: float,
                 send_timeout_s: float) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        self.max_body = max_body
        self.header_timeout_s = header_timeout_s
        self.send_timeout_s = send_timeout_s
        self.state = SendState.IDLE
        #: The request being answered is a HEAD: its answer has a head and no body.
        self.head_request = False

    # ------------------------------------------------------------ reading

    async def read_request(self, *, timeout_s: float | None = None, head_only: bool = False) -> Request | None:
        """The next request, or None when the client closed between requests;
        ``head_only`` stops at its head (for a peer about to be refused)."""
        head: h11.Request | None = None
        body = bytearray()
        with trio.move_on_after(self.header_timeout_s if timeout_s is None else timeout_s):
            while True:
                try:
                    event = self.conn.next_event()
                except h11.RemoteProtocolError as e:
                    raise ProtocolError(400, "bad_request", f"malformed HTTP: {e}") from None
                if event is h11.NEED_DATA:
                    if self.conn.they_are_waiting_for_100_continue:
                        await self._send(h11.InformationalResponse(status_code=100, headers=[]))
                    data = await self.stream.receive_some(65536)
                    self.conn.receive_data(data)
                    if not data and self.conn.their_state is h11.IDLE:
                        return None
                    continue
                if isinstance(event, h11.Request):
                    head = event
                    self.head_request = event.method == b"HEAD"
                    if head_only:
                        return request_from(head, b"")
                    # h11 has checked it is digits; never parse a thousand of them.
                    length = dict((k.lower(), v) for k, v in event.headers).get(b"content-length")
                    if length is not None and (len(length) > 18 or int(length) > self.max_body):
                        raise ProtocolError(413, "body_too_large", f"request body over {self.max_body} bytes")
                elif isinstance(event, h11.Data):
                    body.extend(event.data)
                    if len(body) > self.max_body:
                        raise ProtocolError(413, "body_too_large", f"request body over {self.max_body} bytes")
                elif isinstance(event, h11.EndOfMessage):
                    assert head is not None
                    return request_from(head, bytes(body))
                elif isinstance(event, h11.ConnectionClosed):
                    return None
        raise ProtocolError(408, "request_timeout", "the request was not sent in time")

    async def wait_closed(self) -> None:
        """Return once the client sends anything or goes away (during a stream,
        either means it is gone: it may not send a second request meanwhile)."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.stream.receive_some(1)

    # ------------------------------------------------------------ sending

    async def _send(self, event: Any) -> None:
        await self._send_pieces(self._pieces(event))

    async def start(self, status: int, content_type: str, length: int | None = None, *, first: bytes = b"",
                    end: bool = False) -> None:
        """The head; with ``first``, the body's first piece goes out with it (one send, one
        wake-up of the client), and with ``end`` the whole answer."""
        assert self.state is SendState.IDLE, self.state
        pieces = self._pieces(response_head(status, content_type, length))
        self.state = SendState.STREAMING
        if first and not self.head_request:
            pieces += self._pieces(h11.Data(data=first))
        if end:
            pieces += self._pieces(h11.EndOfMessage())
            self.state = SendState.DONE
        await self._send_pieces(pieces)

    async def write(self, data: bytes, *, end: bool = False) -> None:
        """A piece of the body; with ``end``, the answer's end goes out with it."""
        assert self.state is SendState.STREAMING, self.state
        pieces: list[bytes] = []
        if not self.head_request:  # HEAD: the head says what a GET would send, and nothing follows
            pieces = self._pieces(h11.Data(data=data))
        if end:
            pieces += self._pieces(h11.EndOfMessage())
            self.state = SendState.DONE
        await self._send_pieces(pieces)

    def _pieces(self, event: Any) -> list[bytes]:
        """What ``event`` puts on the wire, a body's bytes as they are (not copied into a frame)."""
        return list(self.conn.send_with_data_passthrough(event) or ())

    async def _send_pieces(self, pieces: list[bytes]) -> None:
        """Small pieces joined into one send (one wake-up of the client); a large one (a run's
        output) sent as it is: joining it with its frame would copy megabytes for a few bytes.
        One send timeout for them all, as for one send: splitting must not multiply it. A
        client that stops reading must not hold the daemon: past the send timeout it counts
        as gone (TooSlowError to the caller)."""
        sends: list[bytes] = []
        small: list[bytes] = []
        for piece in pieces:
            if len(piece) > PASS_THROUGH_BYTES:
                sends += [b"".join(small), piece]
                small = []
            else:
                small.append(piece)
        sends.append(b"".join(small))
        sends = [data for data in sends if data]
        if sends:
            with trio.fail_after(self.send_timeout_s):
                for data in sends:
                    await self.stream.send_all(data)

    async def end(self) -> None:
        assert self.state is SendState.STREAMING, self.state
        await self._send(h11.EndOfMessage())
        self.state = SendState.DONE

    async def answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        """A whole answer: head, body, end (one send)."""
        await self.start(status, content_type, len(body), first=body, end=True)

    def next_cycle(self) -> bool:
        """Ready the connection for the client's next request (keep-alive); False when it cannot be."""
        if self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
            return False
        self.conn.start_next_cycle()
        self.state = SendState.IDLE
        self.head_request = False
        return True

    async def aclose(self) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await self.stream.aclose()
