"""A graph whose stage lives only in the registry runs (real Nix build, real sandbox),
then runs again with the registry stopped, from the verified cache."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from noether_nix.registry.client import cache_path
from tests.registry.conftest import API_KEY, noether, spec

pytestmark = pytest.mark.slow


def graph(path: Path, *refs: str) -> Path:
    doc = {"description": "registry resolution", "version": "0.1.0",
           "root": {"op": "Sequential", "stages": [{"op": "Stage", "id": r} for r in refs]}}
    path.write_text(json.dumps(doc))
    return path


def test_registry_only_stage_runs_then_runs_offline(start_registry: Any, tmp_path: Path) -> None:
    reg = start_registry({})
    publisher, reader = tmp_path / "publisher", tmp_path / "reader"
    f = tmp_path / "triple.json"
    f.write_text(json.dumps(spec("registry_triple", "Triple a number", "def execute(x):\n    return x * 3\n",
                                 examples=[{"input": 2, "output": 6}])))
    sid = noether("stage", "add", str(f), home=publisher,
                  env={"NOETHER_REGISTRY": reg.url, "NOETHER_API_KEY": API_KEY})[1]["data"]["id"]
    by_name = graph(tmp_path / "by_name.json", "registry_triple", "to_text")
    by_id = graph(tmp_path / "by_id.json", sid, "to_text")

    # Without the registry the reader has no such stage.
    rc, _, err = noether("run", str(by_name), "--input", "14", home=reader, check_rc=1)
    assert err["error"]["code"] == "stage_not_found"

    env = {"NOETHER_REGISTRY": reg.url}
    _, out, _ = noether("run", str(by_name), "--input", "14", "--json", home=reader, env=env)
    assert out["data"]["output"] == "42"
    assert any(reg.url in w for w in out["data"]["warnings"])
    # Cached with its origin, verified.
    with sqlite3.connect(cache_path(reg.url, reader)) as db:
        origin, signature = db.execute("SELECT origin, signature FROM stage_origins WHERE stage_id = ?",
                                       (sid,)).fetchone()
    assert (origin, signature) == (reg.url, "valid")
    # Not in the reader's own store: the registry's stages stay apart from local ones.
    assert noether("stage", "get", sid, home=reader, check_rc=1)[2]["error"]["code"] == "stage_not_found"

    assert reg.stop() == 0
    _, out, _ = noether("run", str(by_name), "--input", "5", "--json", home=reader, env=env)
    assert out["data"]["output"] == "15"
    assert any("unreachable" in w for w in out["data"]["warnings"])
    _, out, _ = noether("run", str(by_id), "--input", "1", "--json", home=reader, env=env)
    assert out["data"]["output"] == "3"
    # A reference neither local nor cached, with the registry gone: an error naming it.
    missing = graph(tmp_path / "missing.json", "never_published")
    rc, _, err = noether("run", str(missing), "--input", "1", home=reader, env=env, check_rc=1)
    assert err["error"]["code"] == "registry_unreachable" and reg.url in err["error"]["message"]


def test_a_daemon_resolves_from_its_registry(start_registry: Any, tmp_path: Path) -> None:
    from tests.server.test_daemon_cli import start_daemon, stop

    reg = start_registry({})
    f = tmp_path / "negate.json"
    f.write_text(json.dumps(spec("registry_negate", "Negate a number", "def execute(x):\n    return -x\n",
                                 examples=[{"input": 2, "output": -2}])))
    noether("stage", "add", str(f), home=tmp_path / "publisher",
            env={"NOETHER_REGISTRY": reg.url, "NOETHER_API_KEY": API_KEY})
    g = graph(tmp_path / "g.json", "registry_negate")
    sock = tmp_path / "d.sock"
    daemon = start_daemon(tmp_path / "daemon-home", sock, env={"NOETHER_REGISTRY": reg.url})
    try:
        # The CLI has no registry of its own: the daemon's configuration resolves the stage.
        _, out, _ = noether("--socket", str(sock), "run", str(g), "--input", "7", "--json", home=tmp_path / "client")
        assert out["data"]["output"] == -7
    finally:
        stop(daemon)


def test_a_slow_registry_holds_only_the_run_that_needs_it(tmp_path: Path) -> None:
    """A daemon resolved graphs through its registry on the event loop: while a registry
    took its time to answer, every other client of the daemon waited too."""
    import threading
    import time

    from noether_nix.client import Client
    from noether_nix.errors import NoetherError
    from tests.fake_http import QuietHandler, serve
    from tests.server.test_daemon_cli import start_daemon, stop

    answering = threading.Event()

    class Slow(QuietHandler):
        def do_GET(self) -> None:
            answering.set()
            time.sleep(4)
            self.send_json(404, {"ok": False, "error": {"code": "NOT_FOUND", "message": "no"}})

    server = serve(Slow)
    sock = tmp_path / "d.sock"
    daemon = start_daemon(tmp_path / "daemon-home", sock,
                          env={"NOETHER_REGISTRY": f"http://127.0.0.1:{server.server_address[1]}",
                               "NOETHER_REGISTRY_TIMEOUT_S": "30"})
    try:
        g = json.loads(graph(tmp_path / "g.json", "only_on_the_slow_registry").read_text())
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["events"] = list(Client(str(sock), timeout=60).run(g, 1))
            except NoetherError as e:
                outcome["error"] = e

        runner = threading.Thread(target=run)
        runner.start()
        assert answering.wait(20), "the daemon never asked the registry"
        started = time.monotonic()
        status, health = Client(str(sock), timeout=10).request("GET", "/v1/health")
        waited = time.monotonic() - started
        assert status == 200 and health["ok"]
        assert waited < 2, f"/v1/health waited {waited:.1f} s on the registry"
        runner.join(60)
        error = outcome.get("error")  # the registry has no such stage: the run's own answer, in its time
        assert isinstance(error, NoetherError) and "only_on_the_slow_registry" in error.message, outcome
        assert time.monotonic() - started > 2
    finally:
        stop(daemon)
        server.shutdown()
        server.server_close()
