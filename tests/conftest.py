"""Shared fixtures: every test gets its own NOETHER_HOME."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def noether_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("noether-home")
    monkeypatch.setenv("NOETHER_HOME", str(home))
    monkeypatch.delenv("NOETHER_SOCKET", raising=False)
    return home
