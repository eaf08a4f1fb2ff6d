"""`# requires:` pins: strict parsing, and wheels installed into the program offline."""

from __future__ import annotations

import json
import subprocess

import pytest

from noether_nix.errors import NoetherError
from noether_nix.nix.programs import build_stage_program
from noether_nix.nix.registry import ProgramRegistry
from noether_nix.nix.requirements import parse_requirements
from noether_nix.paths import db_path

ONLY_STORE = ["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/nix/store", "/nix/store",
              "--proc", "/proc", "--dev", "/dev", "--"]


def test_first_nonempty_requires_line_wins() -> None:
    code = "# requires:\n  # requires: six==1.16.0 , attrs==23.1.0,\nimport six\n# requires: other==1\n"
    assert parse_requirements(code) == ["six==1.16.0", "attrs==23.1.0"]
    assert parse_requirements("def execute(x):\n    return x\n") == []


@pytest.mark.parametrize("entry", ["six>=1.0", "six==", "==1.0", "six==1.0;rm -rf", "s ix==1"])
def test_malformed_requirements_are_refused(entry: str) -> None:
    with pytest.raises(NoetherError) as ei:
        parse_requirements(f"# requires: {entry}\n", allow_unpinned=True)
    assert ei.value.code == "invalid_requirement"
    assert ei.value.path == entry


def test_unpinned_requirements_need_explicit_permission(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(NoetherError) as ei:
        parse_requirements("# requires: six\n")
    assert ei.value.code == "unpinned_requirement" and "six==VERSION" in ei.value.message
    monkeypatch.setenv("NOETHER_ALLOW_UNPINNED_PIP", "yes")
    assert parse_requirements("# requires: six\n") == ["six"]


def test_pinned_wheel_is_installed_into_the_program(monkeypatch: pytest.MonkeyPatch) -> None:
    code = "# requires: six==1.16.0\nimport six\n\ndef execute(x):\n    return [six.__version__, six.__file__]\n"
    reg = ProgramRegistry(db_path())
    prog = build_stage_program("9" * 64, "python", code, registry=reg)
    out = subprocess.run(ONLY_STORE + prog.argv, input=b"null", capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    version, where = json.loads(out.stdout)
    assert version == "1.16.0" and where.startswith(prog.store_path + "/site/")
    # The wheel was unpacked at build time: the program does not need it at run time.
    assert not [p for p in prog.closure if p.endswith(".whl")]
    [(wheels,)] = reg.conn.execute("SELECT wheels FROM nix_wheels WHERE requirements = 'six==1.16.0'")
    [wheel] = json.loads(wheels)
    assert wheel["filename"] == "six-1.16.0-py2.py3-none-any.whl" and len(wheel["sha256"]) == 64
    # Recorded with its hash: a second program with the same pins fetches nothing.
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/unreachable")
    again = build_stage_program("8" * 64, "python", code + "\n# another stage\n", registry=reg)
    assert again.built
