"""A private REAPI cluster for tests: PostgreSQL, BuildGrid, noether workers.

Everything listens on 127.0.0.1, lives in a temp dir, runs in its own
process group, and is stopped by pid / process group (never by name).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[2]
BGD = REPO / ".buildgrid-venv" / "bin" / "bgd"
PG_USER = "postgres"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process exited with status {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop_group(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


class Postgres:
    """A private cluster (initdb on a temp dir), trusted local connections only."""

    def __init__(self) -> None:
        # Directly under /tmp: the postgres user must reach it (pytest's dirs are root's, 0700).
        import tempfile

        self.root = Path(tempfile.mkdtemp(prefix="noether-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_user = ["runuser", "-u", PG_USER, "--"] if os.geteuid() == 0 else []

    def start(self) -> None:
        initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
        if not initdb or not pg_ctl:
            raise RuntimeError("PostgreSQL is not installed (./dev setup installs it)")
        if self.as_user:
            shutil.chown(self.root, PG_USER)
        subprocess.run([*self.as_user, initdb, "-D", str(self.data), "-U", "bgd", "--auth=trust", "-E", "UTF8",
                        "--no-sync"], check=True, capture_output=True, timeout=120)
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c max_connections=200"
        subprocess.run([*self.as_user, pg_ctl, "-D", str(self.data), "-l", str(self.root / "log"), "-o", opts,
                        "-w", "-t", "60", "start"], check=True, capture_output=True, timeout=90)
        createdb = pg_bin("createdb")
        assert createdb
        subprocess.run([*self.as_user, createdb, "-h", "127.0.0.1", "-p", str(self.port), "-U", "bgd", "bgd"],
                       check=True, capture_output=True, timeout=60)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://bgd@127.0.0.1:{self.port}/bgd"

    def stop(self) -> None:
        pg_ctl = pg_bin("pg_ctl")
        if pg_ctl and (self.data / "postmaster.pid").exists():
            subprocess.run([*self.as_user, pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


CONFIG = """
server:
  - !channel
    address: "127.0.0.1:{port}"
    insecure-mode: true
authorization:
  method: none
connections:
  - !sql-connection &sql
    connection-string: {db}
    pool-size: 10
    max-overflow: 20
storages:
  - !disk-storage &cas
    path: {cas}
caches:
  - !lru-action-cache &ac
    storage: *cas
    max-cached-refs: 100000
    allow-updates: true
    cache-failed-actions: false
schedulers:
  - !sql-scheduler &sched
    sql: *sql
    storage: *cas
    action-cache: *ac
    bot-session-keepalive-timeout: {keepalive}
    session-expiry-timer-interval: 1
    # A job whose bot vanished with a server restart is failed, not kept forever.
    max-execution-timeout: 60
    execution-timer-interval: 5
    max-job-attempts: 3
    poll-interval: 0.2
    bot-poll-interval: 0.2
    property-set: !dynamic-property-set
      match-property-keys: [OSFamily, noether-launcher, noether-runtime, noether-network, noether-capability,
                            noether-isolation]
    assigners:
      - !priority-age-assigner
        count: 1
        interval: 0.05
instances:
  - name: ""
    services:
      - !action-cache
        cache: *ac
      - !execution
        scheduler: *sched
        operation-stream-keepalive-timeout: 5
        command-allowlist: ["noether"]
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
thread-pool-size: 40
"""


class BuildGrid:
    """``bgd server`` on 127.0.0.1 with a PostgreSQL scheduler and a disk CAS."""

    def __init__(self, root: Path, db: str, keepalive: int = 15) -> None:
        self.root = root
        self.port = free_port()
        self.cas = root / "cas"
        self.cas.mkdir(parents=True, exist_ok=True)
        self.config = root / "bgd.yml"
        self.config.write_text(CONFIG.format(port=self.port, db=db, cas=self.cas, keepalive=keepalive))
        self.db = db
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None
        self.start_s: float | None = None

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    def migrate(self) -> None:
        subprocess.run([str(BGD), "migrate", "apply", self.db], check=True, capture_output=True, timeout=120,
                       cwd=self.root)

    def start(self) -> None:
        started = time.monotonic()
        self.log = open(self.root / "bgd.log", "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen([str(BGD), "server", "start", str(self.config)], cwd=self.root,
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                                     start_new_session=True)
        wait_port(self.port, 60, self.proc)
        self.start_s = time.monotonic() - started

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop_group(self.proc, sig)
            self.proc = None
        if self.log is not None:
            self.log.close()
            self.log = None

    def restart(self) -> None:
        self.stop(signal.SIGKILL)
        self.start()

    def evict(self, digest_hash: str) -> bool:
        """Delete a blob from the disk CAS, as an eviction would."""
        path = self.cas / "cas" / "objects" / digest_hash[:2] / digest_hash[2:]
        if path.exists():
            path.unlink()
            return True
        return False


class Worker:
    """``noether worker`` as a subprocess in its own process group and NOETHER_HOME."""

    def __init__(self, root: Path, url: str, bot_id: str, *extra: str) -> None:
        self.root = root
        self.home = root / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.bot_id = bot_id
        self.argv = [sys.executable, "-m", "noether_nix.cli.main", "worker", "--reapi", url, "--bot-id", bot_id,
                     *extra]
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "worker.log"

    def start(self, timeout: float = 60) -> None:
        self.spawn()
        self.wait_ready(timeout)

    def spawn(self) -> None:
        """Starts the worker without waiting for it (workers get ready side by side)."""
        env = {**os.environ, "NOETHER_HOME": str(self.home)}
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child holds it; closed below)
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                     start_new_session=True, cwd=self.root)
        log.close()

    def wait_ready(self, timeout: float = 60) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.bot_id} exited ({self.proc.returncode}): {self.log_tail()}")
            if b'"worker_ready"' in self.log_path.read_bytes():
                return
            time.sleep(0.1)
        raise TimeoutError(f"worker {self.bot_id} not ready after {timeout} s: {self.log_tail()}")

    def log_tail(self) -> str:
        return self.log_path.read_bytes()[-3000:].decode("utf-8", "replace")

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_bytes().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, signal.SIGTERM, timeout=10)
            self.proc = None
