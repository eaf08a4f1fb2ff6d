"""A live daemon for tests that talk to it as clients do, hostile ones included.

Its log goes to a file (a pipe nobody reads would fill up and stall the
daemon under thousands of requests), its home and socket are the test's.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from noether_nix.client import Client

HELLO = {"description": "d", "version": "1", "root": {"op": "Stage", "id": "text_upper"}}
# What an unprivileged peer runs (uid 65534 cannot import this checkout's packages).
SYSTEM_PYTHON = "/usr/bin/python3"


class Live:
    def __init__(self, proc: subprocess.Popen[bytes], sock: Path, home: Path, log: Path) -> None:
        self.proc, self.sock, self.home, self.log = proc, sock, home, log

    def client(self, timeout: float | None = 60) -> Client:
        return Client(str(self.sock), timeout=timeout)

    def raw(self, data: bytes, timeout: float = 15, *, shut: bool = False) -> bytes:
        """Send ``data`` on a fresh connection, read until the daemon closes it (or ``timeout``)."""
        return raw_exchange(self.sock, data, timeout, shut=shut)

    def health(self, timeout: float = 10) -> dict[str, Any]:
        status, body = self.client(timeout).request("GET", "/v1/health")
        assert status == 200, body
        return body["data"]  # type: ignore[no-any-return]

    def counters(self) -> dict[str, int]:
        return self.health()["counters"]  # type: ignore[no-any-return]

    def serves_a_run(self) -> None:
        assert self.proc.poll() is None, f"the daemon died: {self.tail()}"
        assert list(self.client().run(HELLO, "still here"))[-1]["output"] == "STILL HERE"

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def crashes(self) -> list[str]:
        """Log lines of exceptions that escaped a request or a connection (each one a bug)."""
        return [line for line in self.log.read_text(errors="replace").splitlines()
                if '"connection_failed"' in line or '"request_failed"' in line or '"run_crashed"' in line]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def raw_exchange(sock: Path, data: bytes, timeout: float = 15, *, shut: bool = False) -> bytes:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(str(sock))
    chunks: list[bytes] = []
    try:
        try:
            s.sendall(data)
            if shut:
                s.shutdown(socket.SHUT_WR)
        except (ConnectionResetError, BrokenPipeError):
            pass  # it answered (and closed) before reading everything: its answer is still there
        while chunk := s.recv(65536):
            chunks.append(chunk)
    except (ConnectionResetError, BrokenPipeError, TimeoutError):
        pass
    finally:
        s.close()
    return b"".join(chunks)


def status_of(answer: bytes) -> int | None:
    line = answer.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) >= 2 and line[0].startswith(b"HTTP/") and line[1].isdigit() else None


def start_live(tmp: Path, config: dict[str, Any] | None = None, sock_dir: Path | None = None,
               timeout: float = 60) -> Live:
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    sock = (sock_dir or tmp) / "noether.sock"
    log = tmp / "daemon.log"
    args = [sys.executable, "-m", "noether_nix.cli.main", "daemon", "--socket", str(sock)]
    if config:
        cfg = tmp / "daemon.json"
        cfg.write_text(json.dumps(config))
        args += ["--config", str(cfg)]
    env = {k: v for k, v in os.environ.items() if k not in ("NOETHER_SOCKET", "NOETHER_LOCAL", "NOETHER_CONFIG")}
    env.update(NOETHER_HOME=str(home), XDG_RUNTIME_DIR=str(home))
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    live = Live(proc, sock, home, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited: {live.tail()}")
        if sock.exists():
            try:
                if Client(str(sock), timeout=5).request("GET", "/v1/health")[0] == 200:
                    return live
            except OSError:
                pass
        time.sleep(0.05)
    live.stop()
    raise AssertionError(f"daemon did not come up: {live.tail()}")


def open_socket_dir() -> Path:
    """A directory other users can reach, for a socket an unprivileged peer connects to."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="noether-sock-", dir="/tmp"))
    d.chmod(0o755)
    return d


def as_nobody(code: str, *args: str, timeout: float = 120, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """``code`` run by the system Python as uid/gid 65534 (a peer that is neither root nor the daemon's user)."""
    return subprocess.run([SYSTEM_PYTHON, "-c", code, *args], capture_output=True, text=True, user=65534,
                          group=65534, extra_groups=[], timeout=timeout, input=input)
