"""The daemon's HTTP front door against hostile bytes (security finding 3).

One header byte >= 0x80 used to end the daemon (a ``UnicodeDecodeError``
escaped the connection handler). Nothing one connection sends may end the
daemon or even escape its connection: every malformed request gets a 4xx
envelope, and the daemon serves the next client. Each test also checks
that no exception escaped a connection (the daemon logs each one as a bug).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.live import HELLO, Live, start_live, status_of

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    daemon = start_live(tmp_path_factory.mktemp("hostile-http"), {"header_timeout_s": 2, "max_body_bytes": 64 << 10})
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(autouse=True)
def nothing_escapes(live: Live) -> Iterator[None]:
    assert live.proc.poll() is None, "the daemon died in an earlier test"
    before, errors = len(live.crashes()), live.counters().get("connection_errors")
    yield
    assert live.proc.poll() is None, f"the daemon died: {live.tail()}"
    assert live.crashes()[before:] == []
    assert live.counters().get("connection_errors") == errors


def request(method: bytes, target: bytes, headers: list[bytes] = (), body: bytes = b"") -> bytes:  # type: ignore[assignment]
    head = [method + b" " + target + b" HTTP/1.1", b"Host: x", b"Connection: close", *headers]
    if body:
        head.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def envelope(answer: bytes) -> dict[str, object]:
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("where", ["header value", "header name", "target", "method"])
def test_a_byte_over_0x80_in_the_request_head_is_a_400_and_the_daemon_serves_on(live: Live, where: str) -> None:
    req = {
        "header value": request(b"GET", b"/v1/health", [b"X-Note: caf\xe9 \xff"]),
        "header name": request(b"GET", b"/v1/health", [b"X-\xc3\xa9t\xe9: 1"]),
        "target": request(b"GET", b"/v1/stages/\xff\xfe"),
        "method": request(b"G\xc9T", b"/v1/health"),
    }[where]
    answer = live.raw(req)
    assert status_of(answer) == 400, answer[:300]
    assert envelope(answer)["error"]["code"] == "bad_request"  # type: ignore[index]
    live.serves_a_run()


def test_head_gets_a_head_and_no_body(live: Live) -> None:
    for target in (b"/v1/health", b"/v1/runs", b"/v1/stages/text_upper"):
        answer = live.raw(request(b"HEAD", target))
        head, _, body = answer.partition(b"\r\n\r\n")
        assert status_of(answer) == 405 and body == b"", answer


@pytest.mark.parametrize(("length", "status"), [
    (b"abc", 400), (b"-1", 400), (b"1 2", 400), (b"9" * 4000, 400), (b"99999999999999999999", 413),
    (b"70000", 413),
])
def test_a_bad_or_oversized_content_length_is_refused(live: Live, length: bytes, status: int) -> None:
    answer = live.raw(b"POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\n{}")
    assert status_of(answer) == status, answer[:300]


def test_conflicting_lengths_and_transfer_encodings_are_refused(live: Live) -> None:
    both = b"POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"
    assert status_of(live.raw(both)) == 400
    smuggle = (b"POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"0\r\n\r\n")
    assert status_of(live.raw(smuggle)) in (400, 501)
    unknown = b"POST /v1/check HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"
    assert status_of(live.raw(unknown)) in (400, 501)


def test_a_body_over_the_cap_on_a_keep_alive_connection_ends_that_connection_only(live: Live) -> None:
    over = b"POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100_000
    after = b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = live.raw(over + after)
    assert status_of(answer) == 413 and answer.count(b"HTTP/1.1 ") == 1, answer[:300]
    assert status_of(live.raw(after)) == 200


def test_chunked_bodies_are_read_bounded_and_checked(live: Live) -> None:
    body = json.dumps({"graph": HELLO}).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7]) for i in range(0, len(body), 7))
    head = b"POST /v1/check HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer = live.raw(head + chunks + b"0\r\n\r\n")
    assert status_of(answer) == 200 and envelope(answer)["ok"] is True
    assert status_of(live.raw(head + b"zz\r\n{}\r\n0\r\n\r\n")) == 400  # not a chunk size
    assert status_of(live.raw(head + b"4\r\n{}\r\n0\r\n\r\n")) == 400  # a chunk shorter than it says
    big = b"".join(b"8000\r\n" + b" " * 0x8000 + b"\r\n" for _ in range(4))  # 128 KiB, over the 64 KiB cap
    assert status_of(live.raw(head + big + b"0\r\n\r\n")) == 413


def test_expect_100_continue_is_answered(live: Live) -> None:
    import socket

    body = json.dumps({"graph": HELLO}).encode()
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(str(live.sock))
    try:
        s.sendall(b"POST /v1/check HTTP/1.1\r\nHost: x\r\nConnection: close\r\nExpect: 100-continue\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 100 ")  # within the header timeout, before any body
        s.sendall(body)
        rest = b""
        while chunk := s.recv(65536):
            rest += chunk
    finally:
        s.close()
    assert status_of(rest) == 200


def test_pipelined_requests_are_answered_in_order(live: Live) -> None:
    one = b"GET /v1/stages/text_upper HTTP/1.1\r\nHost: x\r\n\r\n"
    two = b"GET /v1/nothing HTTP/1.1\r\nHost: x\r\n\r\n"
    three = b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = live.raw(one + two + three)
    statuses = [int(part[:3]) for part in answer.split(b"HTTP/1.1 ")[1:] if part[:3].isdigit()]
    assert statuses == [200, 404, 200], answer[:500]


def test_many_or_huge_headers_are_bounded(live: Live) -> None:
    many = b"".join(b"X-%d: y\r\n" % i for i in range(3000))  # ~30 KiB of headers: served
    answer = live.raw(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + many + b"\r\n")
    assert status_of(answer) == 200
    huge = b"X-Big: " + b"a" * 1_000_000 + b"\r\n"  # far past h11's 64 KiB limit on an unfinished head
    answer = live.raw(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n" + huge + b"\r\n")
    assert status_of(answer) in (400, 431), answer[:200]


@pytest.mark.parametrize("data", [
    b"\x00\x01\x02 not http\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"GET /v1/health HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET /v1/health\r\n\r\n",
    b"GET  /v1/health  HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v1/health HTTP/1.1\r\nHost: x\r\n folded: header\r\n\r\n",
    b"GET /v1/health HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
    b"GET /v1/health HTTP/1.1\nHost: x\n\n",
    b"\r\n\r\n\r\n",
], ids=["binary", "http2", "version", "http09", "spaces", "folded", "space-in-name", "bare-lf", "empty"])
def test_malformed_heads_get_a_4xx_or_a_closed_connection(live: Live, data: bytes) -> None:
    answer = live.raw(data, timeout=10, shut=True)
    status = status_of(answer)
    assert status is None or 200 <= status < 500, answer[:300]


def test_odd_methods_and_targets_get_envelopes(live: Live) -> None:
    for method, target in ((b"OPTIONS", b"*"), (b"CONNECT", b"a:80"), (b"TRACE", b"/"),
                           (b"GET", b"http://elsewhere/v1/health"), (b"GET", b"/v1/stages/%ff%00%c3"),
                           (b"GET", b"/v1/runs?limit=99999999999999999999999"), (b"GET", b"/v1/runs?limit=1e400"),
                           (b"GET", b"/v1/runs?limit=-5"), (b"GET", b"/v1/runs?limit=&limit"),
                           (b"GET", b"/v1/stages?lifecycle=%ff")):
        answer = live.raw(request(method, target))
        status = status_of(answer)
        assert status is not None and status < 500, (method, target, answer[:300])
        if status != 200:
            assert envelope(answer)["ok"] is False


def test_an_idle_or_slow_client_is_let_go(live: Live) -> None:
    # header_timeout_s is 2 here: a client that says nothing, or half a head, gets a 408.
    for data in (b"", b"GET /v1/hea", b"POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{"):
        answer = live.raw(data, timeout=10)
        assert status_of(answer) in (408, None), answer[:200]


def test_a_client_that_vanishes_mid_request_or_mid_stream_costs_nothing(live: Live) -> None:
    import socket

    for data in (b"POST /v1/runs HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"graph\"",
                 request(b"POST", b"/v1/runs", body=json.dumps({"graph": HELLO, "input": "x"}).encode())):
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(live.sock))
        s.sendall(data)
        s.close()
    live.serves_a_run()


def test_the_daemon_still_serves_a_run_after_all_that(live: Live) -> None:
    live.serves_a_run()
    assert Path(live.sock).exists()
