"""The daemon's HTTP framing sends a large body piece (a run's output line) to the
socket as it is, not copied into its chunk's frame, and what it sends still parses
back, byte for byte, as the answer it means."""

from __future__ import annotations

from typing import Any

import h11
import pytest
import trio

from noether_nix.server.http import PASS_THROUGH_BYTES, HttpConnection


class Recorder:
    """A stream that keeps every object it is asked to send."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def send_all(self, data: Any) -> None:
        self.sent.append(data)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return b""


def answering(method: bytes = b"GET") -> tuple[HttpConnection, Recorder]:
    stream = Recorder()
    http = HttpConnection(stream, max_body=1 << 20, header_timeout_s=5, send_timeout_s=5)  # type: ignore[arg-type]
    http.conn.receive_data(method + b" /v1/runs HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(http.conn.next_event(), h11.Request)
    http.head_request = method == b"HEAD"
    return http, stream


def parsed(wire: bytes, method: bytes = b"GET") -> tuple[int, bytes]:
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/v1/runs", headers=[("Host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(wire)
    status, body = 0, b""
    while True:
        event = client.next_event()
        if isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return status, body
        else:
            raise AssertionError(event)


@pytest.mark.parametrize("big_first", [False, True])
async def test_a_large_piece_goes_out_as_it_is_and_the_stream_parses_back(big_first: bool) -> None:
    http, stream = answering()
    small = b'{"event":"stage_started"}\n'
    big = b'{"event":"run_finished","output":"' + b"x" * (PASS_THROUGH_BYTES * 16) + b'"}\n'
    if big_first:
        await http.start(200, "application/x-ndjson", first=big)
        await http.write(small, end=True)
    else:
        await http.start(200, "application/x-ndjson", first=small)
        await http.write(big, end=True)
    assert any(piece is big for piece in stream.sent), "the large line was copied on its way out"
    assert parsed(b"".join(stream.sent)) == (200, small + big if not big_first else big + small)


async def test_a_small_answer_is_one_send_and_a_head_request_gets_no_body() -> None:
    http, stream = answering()
    await http.answer(200, b'{"ok":true}')
    assert len(stream.sent) == 1 and parsed(stream.sent[0]) == (200, b'{"ok":true}')
    http, stream = answering(b"HEAD")
    await http.answer(200, b"Q" * (PASS_THROUGH_BYTES * 2))
    wire = b"".join(stream.sent)
    assert b"QQ" not in wire and parsed(wire, b"HEAD")[1] == b""


class SlowReader(Recorder):
    """A client that takes ``per_send`` seconds to take each send, whatever its size."""

    def __init__(self, per_send: float) -> None:
        super().__init__()
        self.per_send = per_send

    async def send_all(self, data: Any) -> None:
        await trio.sleep(self.per_send)
        self.sent.append(data)


async def test_a_large_piece_split_into_sends_still_gets_one_send_timeout(autojump_clock: Any) -> None:
    # The send timeout bounds how long one answer's piece may hold the daemon; split into
    # several sends (frame, large line, end) it must not grow to a timeout per send.
    http, _ = answering()
    stream = SlowReader(per_send=2.0)
    http.stream = stream  # type: ignore[assignment]
    await http.start(200, "application/x-ndjson")
    big = b"x" * (PASS_THROUGH_BYTES * 2)
    started = trio.current_time()
    with pytest.raises(trio.TooSlowError):
        await http.write(big, end=True)  # three sends of 2 s each, under a 5 s send timeout
    assert trio.current_time() - started <= 5.0 + 1e-6
