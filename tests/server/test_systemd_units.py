"""The systemd units pass `systemd-analyze verify` (no systemd as PID 1 needed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"


@pytest.mark.parametrize("unit", ["noether.socket", "noether.service", "noether-run@nightly.service",
                                  "noether-run@nightly.timer"])
def test_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    for f in UNITS.iterdir():
        shutil.copy(f, tmp_path / f.name)
    if "@nightly" in unit:
        # Verify an instance of the template.
        src = unit.replace("@nightly", "@")
        shutil.copy(UNITS / src, tmp_path / unit)
    rc, problems = verify(tmp_path / unit)
    assert rc == 0 and not problems


def verify(path: Path) -> tuple[int, list[str]]:
    # systemd-analyze exits 0 on ignored settings; its warnings are the verdict.
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)],
                         capture_output=True, text=True, timeout=60)
    markers = ("Unknown", "Failed to", "bad-setting", "Invalid", "not executable")
    return out.returncode, [line for line in out.stderr.splitlines() if any(m in line for m in markers)]


def test_the_check_catches_a_broken_unit(tmp_path: Path) -> None:
    bad = tmp_path / "broken.service"
    bad.write_text("[Service]\nType=wat\nExecStart=/usr/bin/env true\nBogusDirective=1\n")
    assert verify(bad)[1]
