"""Shared fixtures: every test gets its own NOETHER_HOME."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def noether_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("noether-home")
    monkeypatch.setenv("NOETHER_HOME", str(home))
    # No daemon unless a test starts one: CLI commands use a live default socket.
    monkeypatch.delenv("NOETHER_SOCKET", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home))
    return home
