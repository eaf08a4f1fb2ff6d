"""Starting with a bad configuration fails with a code; losing PostgreSQL costs 503s, not the server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.registry.conftest import API_KEY, PgCluster, curl, signed_stage_json, spec


def serve(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "NOETHER_HOME": str(home), **(env or {})}
    return subprocess.run([sys.executable, "-m", "noether_nix.cli.main", "registry", "serve", *args],
                          capture_output=True, text=True, timeout=60, env=full)


def envelope(stdout: str) -> Any:
    """The one envelope a failed command prints, on stdout (its logs went to stderr)."""
    import json

    return json.loads(stdout)


def test_bad_configuration_is_an_error_with_a_code(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = serve(tmp_path, "--bind", f"127.0.0.1:{port}")
    assert proc.returncode == 1 and envelope(proc.stdout)["error"]["code"] == "bind_failed"
    proc = serve(tmp_path, "--bind", "127.0.0.1:99999")
    assert proc.returncode == 1 and envelope(proc.stdout)["error"]["code"] == "invalid_config"
    proc = serve(tmp_path, env={"DATABASE_URL": f"postgresql:///x?host={tmp_path}/nowhere&user=postgres&password=s3cret"})
    err = envelope(proc.stdout)["error"]
    assert proc.returncode == 1 and err["code"] == "store_unavailable" and "s3cret" not in proc.stderr + proc.stdout
    proc = serve(tmp_path, env={"NOETHER_EMBEDDING_PROVIDER": "mock"})
    assert proc.returncode == 1 and envelope(proc.stdout)["error"]["code"] == "invalid_config"


def test_losing_postgresql_costs_requests_not_the_server(start_registry: Any, tmp_path: Path) -> None:
    cluster = PgCluster()  # its own: this test stops it
    try:
        reg = start_registry({"DATABASE_URL": cluster.new_database()})
        stage = signed_stage_json(spec("outage", "Survives an outage"), tmp_path)
        key = ["-H", f"X-API-Key: {API_KEY}"]
        assert curl("-X", "POST", f"{reg.url}/stages", *key, data=stage)[0] == 201
        cluster.halt()
        status, doc = curl(f"{reg.url}/stages/{stage['id']}")
        assert status == 503 and doc["error"]["code"] == "UNAVAILABLE"
        assert curl("-X", "POST", f"{reg.url}/stages", *key, data=stage)[0] == 503
        assert reg.alive()
        cluster.start()
        status, doc = curl(f"{reg.url}/stages/{stage['id']}")
        assert status == 200 and doc["result"]["id"] == stage["id"]
        assert not reg.events("request_failed")
    finally:
        cluster.stop()
