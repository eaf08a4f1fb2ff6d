"""Real registries for the tests: `noether registry serve` processes on 127.0.0.1,
over SQLite or over a private PostgreSQL cluster this session starts.

The cluster is initdb'd in a temp directory, listens only on a Unix socket in
that directory, and is stopped at the end of the session. PostgreSQL refuses
to run as root: as root the cluster runs as the `postgres` system user (or
`nobody`), which owns the directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

API_KEY = "test-key-0123456789"
PG_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)


# ---------------------------------------------------------------- PostgreSQL


class PgCluster:
    def __init__(self) -> None:
        if not PG_BINS or not (PG_BINS[0] / "initdb").exists():
            pytest.fail("PostgreSQL server binaries are missing (/usr/lib/postgresql/*/bin): run ./dev setup")
        self.bin = PG_BINS[0]
        self.dir = Path(tempfile.mkdtemp(prefix="noether-pg-"))
        self.data = self.dir / "data"
        self.user: str | None = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                with contextlib.suppress(KeyError):
                    pw = pwd.getpwnam(name)
                    os.chown(self.dir, pw.pw_uid, pw.pw_gid)
                    self.user = name
                    break
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--locale=C", "-E", "UTF8",
                 "--no-sync")
        self.start()

    def start(self) -> None:
        opts = f"-k {self.dir} -c listen_addresses='' -c fsync=off -c full_page_writes=off -c max_connections=60"
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-o", opts, "-w", "-t", "60", "start")

    def halt(self) -> None:
        """Stop the server, keeping its data (``start`` brings it back)."""
        self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "60", "stop")

    def _pg(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin / tool), *args]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            log = (self.dir / "log").read_text() if (self.dir / "log").exists() else ""
            raise RuntimeError(f"{tool} failed: {proc.stdout}\n{proc.stderr}\n{log}")

    def url(self, db: str = "postgres") -> str:
        return f"postgresql:///{db}?host={self.dir}&user=postgres"

    def new_database(self) -> str:
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        # The data goes away with the directory: no shutdown checkpoint needed.
        with contextlib.suppress(Exception):
            self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "60", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    cluster = PgCluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """A fresh database on the session's cluster."""
    return pg_cluster.new_database()


# ---------------------------------------------------------------- registry processes


class Registry:
    """A `noether registry serve` process bound to 127.0.0.1 on a free port."""

    def __init__(self, home: Path, env: dict[str, str | None], *args: str) -> None:
        self.home = home
        self.log_path = home / f"registry-{uuid.uuid4().hex[:6]}.log"
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.url = ""
        full_env = {**os.environ, "NOETHER_HOME": str(home)}
        full_env.pop("NOETHER_REGISTRY", None)
        for k, v in env.items():
            if v is None:
                full_env.pop(k, None)
            else:
                full_env[k] = v
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "noether_nix.cli.main", "registry", "serve", "--bind", "127.0.0.1:0", *args],
            env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(90) or not self.url:
            self.stop()
            raise RuntimeError("registry did not start:\n" + "".join(self.lines[-40:]))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        with self.log_path.open("w") as log:
            for line in self.proc.stderr:
                self.lines.append(line)
                log.write(line)
                log.flush()
                if '"registry_ready"' in line:
                    with contextlib.suppress(ValueError, KeyError):
                        self.url = json.loads(line)["url"]
                    self._ready.set()
        self._ready.set()

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in list(self.lines):
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if doc.get("event") == name:
                    out.append(doc)
        return out

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._reader.join(5)
        return self.proc.returncode


@pytest.fixture
def start_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Start registries; all are stopped after the test."""
    started: list[Registry] = []

    def start(env: dict[str, str | None] | None = None, *args: str, home: Path | None = None) -> Registry:
        reg = Registry(home or tmp_path_factory.mktemp("registry-home"), {"NOETHER_API_KEY": API_KEY, **(env or {})},
                       *args)
        started.append(reg)
        return reg

    yield start
    for reg in started:
        reg.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The environment that picks each storage backend."""
    if request.param == "sqlite":
        return {}
    return {"DATABASE_URL": request.getfixturevalue("pg_url")}


@pytest.fixture
def registry(start_registry: Any, backend_env: dict[str, str]) -> Registry:
    """A registry on each backend in turn."""
    reg: Registry = start_registry(backend_env)
    return reg


@pytest.fixture
def sqlite_registry(start_registry: Any) -> Registry:
    """A registry on SQLite only: for client behaviour the backend does not change."""
    reg: Registry = start_registry({})
    return reg


# ---------------------------------------------------------------- helpers


def curl(*args: str, data: Any = None) -> tuple[int, Any]:
    """curl, as a user would: returns (HTTP status, decoded JSON body or text)."""
    cmd = ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", *args]
    if data is not None:
        cmd += ["-H", "content-type: application/json", "--data-binary",
                data if isinstance(data, str) else json.dumps(data)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    body, _, status = proc.stdout.rpartition("\n")
    try:
        return int(status), json.loads(body)
    except ValueError:
        return int(status), body


def noether(*args: str, env: dict[str, str] | None = None, home: Path | None = None,
            check_rc: int | None = 0) -> tuple[int, Any, Any]:
    """The CLI in its own process; returns (rc, the envelope, the envelope again when it is an error else stderr).

    A command prints exactly one envelope, on stdout, ok or not."""
    full_env = dict(os.environ)
    for var in ("NOETHER_REGISTRY", "NOETHER_API_KEY"):
        full_env.pop(var, None)
    if home is not None:
        full_env["NOETHER_HOME"] = str(home)
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "noether_nix.cli.main", *args], capture_output=True, text=True,
                          timeout=300, env=full_env)
    out = json.loads(proc.stdout) if proc.stdout.strip() else None
    assert not proc.stderr.lstrip().startswith("{"), proc.stderr
    err = out if isinstance(out, dict) and out.get("ok") is False else proc.stderr
    if check_rc is not None:
        assert proc.returncode == check_rc, (proc.stdout, proc.stderr)
    return proc.returncode, out, err


def spec(name: str, description: str, code: str = "def execute(x):\n    return x + 1\n", *,
         input: Any = "Number", output: Any = "Number", examples: list[dict[str, Any]] | None = None,
         **extra: Any) -> dict[str, Any]:
    return {"name": name, "description": description, "input": input, "output": output, "implementation": code,
            "examples": examples if examples is not None else [{"input": 1, "output": 2}], **extra}


def signed_stage_json(doc: dict[str, Any], home: Path) -> dict[str, Any]:
    """The full Stage JSON `noether stage add` would publish: parsed and signed with the author key of ``home``."""
    from noether_nix.model.stage import stage_from_spec, stage_to_json
    from noether_nix.store.signing import sign_for_store

    return stage_to_json(sign_for_store(stage_from_spec(doc), home=home))
