"""What a peer that may run graphs but not change the store (a non-writer) may ask of a run.

A live daemon that allows uid 65534 to run graphs, with only root trusted to
change the store, and ``allow_unsandboxed_runs`` on: the setting opens
unsandboxed runs to its writers, never to a non-writer (whose stages would
then run as the daemon's user, with its database and its author key).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.server.live import HELLO, Live, as_nobody, open_socket_dir, start_live

pytestmark = pytest.mark.slow

# uid 65534 POSTs one run and prints the status line and the body's error code.
POST_RUN = r"""
import json, socket, sys
path, body = sys.argv[1], sys.argv[2].encode()
s = socket.socket(socket.AF_UNIX); s.connect(path)
s.sendall(b"POST /v1/runs HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
s.settimeout(60)
got = b""
while b"\n" not in got.partition(b"\r\n\r\n")[2].partition(b"{")[2]:
    chunk = s.recv(65536)
    if not chunk:
        break
    got += chunk
head, _, rest = got.decode("utf-8", "replace").partition("\r\n\r\n")
status = head.split(" ")[1]
lines = [line for line in rest.splitlines() if line.startswith("{")]
print(json.dumps({"status": int(status), "first": json.loads(lines[0]) if lines else None}))
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    config = {"socket_mode": 0o666, "allowed_uids": [0, 65534], "write_uids": [0],
              "allow_unsandboxed_runs": True}
    daemon = start_live(tmp_path_factory.mktemp("rules"), config, sock_dir=open_socket_dir())
    try:
        yield daemon
    finally:
        daemon.stop()


def post_run_as_nobody(live: Live, options: dict[str, object]) -> dict[str, object]:
    body = json.dumps({"graph": HELLO, "input": "hi", "options": options})
    done = as_nobody(POST_RUN, str(live.sock), body)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_a_non_writer_may_not_run_without_a_sandbox_even_where_the_daemon_allows_it(live: Live) -> None:
    got = post_run_as_nobody(live, {"isolate": "none"})
    assert got["status"] == 403, got
    error = got["first"]["error"]  # type: ignore[index]
    assert error["code"] == "forbidden" and "isolate" in error["message"], error
    # The same peer's sandboxed run goes through: the refusal is about isolation only.
    got = post_run_as_nobody(live, {})
    assert got["status"] == 200 and got["first"]["event"] == "run_accepted", got  # type: ignore[index]
    # A writer (root) may: the setting is there for it.
    events = list(live.client().run(HELLO, "root", options={"isolate": "none"}))
    assert events[-1]["status"] == "ok" and events[-1]["trace"]["isolation"] == "none", events[-1]
