"""systemd/noether-registry.service passes `systemd-analyze verify`."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.server.test_systemd_units import UNITS, verify


def test_registry_unit_verifies(tmp_path: Path) -> None:
    unit = UNITS / "noether-registry.service"
    shutil.copy(unit, tmp_path / unit.name)
    rc, problems = verify(tmp_path / unit.name)
    assert rc == 0 and not problems, problems
    text = unit.read_text()
    assert "ExecStart=/usr/bin/env noether registry serve" in text and "Type=notify" in text
