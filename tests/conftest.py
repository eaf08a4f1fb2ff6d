"""Shared fixtures: every test gets its own NOETHER_HOME."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.sandbox_access import share_with_sandbox

# Hypothesis: CI runs a fixed, reproducible budget (the same examples every
# run, nothing remembered between runs); a developer's run explores at random
# and remembers failures in .hypothesis/. HYPOTHESIS_PROFILE picks one.
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))

#: The fast tier (`./dev test --fast`): tests that need no Nix build, no sandbox, no
#: daemon and no database — the model, graphs, the store, the pure stdlib, settings,
#: and the interpreter against the in-memory executor (tests/fakes.py).
FAST = ("tests/unit/", "tests/model/", "tests/graph/", "tests/store/", "tests/stdlib/test_pure_examples.py",
        "tests/stdlib/test_pure_behaviour.py", "tests/stdlib/test_definitions.py",
        "tests/engine/test_interpreter_fast.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test ``fast`` or ``real`` (real bwrap, Nix, a daemon or a database)."""
    root = Path(str(config.rootpath))
    for item in items:
        rel = str(Path(str(item.path)).relative_to(root))
        item.add_marker(pytest.mark.fast if rel.startswith(FAST) else pytest.mark.real)


@pytest.fixture(autouse=True)
def noether_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("noether-home")
    monkeypatch.setenv("NOETHER_HOME", str(home))
    # No daemon unless a test starts one: CLI commands use a live default socket.
    monkeypatch.delenv("NOETHER_SOCKET", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home))
    return home


@pytest.fixture
def local_http_server() -> Iterator[str]:
    """An HTTP server on 127.0.0.1 answering every GET with "  served locally \\n" (the network example's)."""
    from tests.fake_http import QuietHandler, served

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"  served locally \n")

    with served(Handler) as url:
        yield url + "/"


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temporary directory that sandboxes started by root can reach.

    Those run as a dedicated noether-sbx user (docs/security.md), and
    pytest's own tmp_path lies under a 0700 directory no other user may
    search: grants for them live here, under /tmp, group noether-sbx, 0770."""
    d = Path(tempfile.mkdtemp(prefix="noether-test-"))
    share_with_sandbox(d, writable=True)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
