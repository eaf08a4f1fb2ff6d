"""Shared fixtures: every test gets its own NOETHER_HOME."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sandbox_access import share_with_sandbox


@pytest.fixture(autouse=True)
def noether_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("noether-home")
    monkeypatch.setenv("NOETHER_HOME", str(home))
    # No daemon unless a test starts one: CLI commands use a live default socket.
    monkeypatch.delenv("NOETHER_SOCKET", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home))
    return home


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
