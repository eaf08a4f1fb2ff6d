"""Offline runtimes and per-stage programs, built for real in the Nix store."""

from __future__ import annotations

import os
import subprocess

import pytest

from noether_nix.errors import NoetherError
from noether_nix.nix.programs import build_stage_program
from noether_nix.nix.registry import ProgramRegistry
from noether_nix.nix.runtime import ensure_runtime
from noether_nix.paths import db_path

ONLY_STORE = ["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/nix/store", "/nix/store",
              "--proc", "/proc", "--dev", "/dev", "--"]


@pytest.mark.parametrize("language", ["python", "bash"])
def test_runtime_runs_with_only_the_store_visible(language: str) -> None:
    rt = ensure_runtime(language)
    assert rt.store_path.startswith("/nix/store/") and rt.source == "host-import"
    probe = {"python": [rt.interpreter, "-c", "import os, ssl, sqlite3, json; print(os.path.exists('/usr'))"],
             "bash": [rt.interpreter, "-c", "[ -e /usr ] && echo True || echo False"]}[language]
    out = subprocess.run(ONLY_STORE + probe, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("language", "code", "stdin", "expected"),
    [
        ("python", "def execute(x):\n    print('chatter goes to stderr')\n    return {'n': x['n'] + 1}\n",
         b'{"n": 1}', b'{"n": 2}'),
        ("bash", "execute() {\n  printf '%s' \"$1\" | tr a-z A-Z\n}\n", b'"abc"', b'"ABC"'),
    ],
)
def test_stage_program_runs_in_bwrap_with_only_the_store(language: str, code: str, stdin: bytes,
                                                        expected: bytes) -> None:
    reg = ProgramRegistry(db_path())
    prog = build_stage_program(f"{language}test" * 4, language, code, registry=reg)
    assert "noether-stage-" in prog.store_path
    out = subprocess.run(ONLY_STORE + prog.argv, input=stdin, capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected


def test_second_build_is_a_cache_hit_without_nix(monkeypatch: pytest.MonkeyPatch) -> None:
    reg = ProgramRegistry(db_path())
    code = "def execute(x):\n    return x\n"
    first = build_stage_program("c" * 64, "python", code, registry=reg)
    monkeypatch.setenv("PATH", "/nonexistent")  # any nix-build call would now fail
    second = build_stage_program("c" * 64, "python", code, registry=reg)
    assert second.store_path == first.store_path and second.built is False


def test_build_failure_is_classified(monkeypatch: pytest.MonkeyPatch) -> None:
    ensure_runtime("python")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(NoetherError) as ei:
        build_stage_program("d" * 64, "python", "def execute(x):\n    return 1\n",
                            registry=ProgramRegistry(db_path()))
    assert ei.value.code == "nix_missing"


def test_programs_survive_garbage_collection() -> None:
    reg = ProgramRegistry(db_path())
    prog = build_stage_program("e" * 64, "python", "def execute(x):\n    return 'alive'\n", registry=reg)
    gc = subprocess.run(["nix-collect-garbage", "-d"], capture_output=True, text=True, timeout=300)
    assert gc.returncode == 0, gc.stderr
    assert os.path.exists(prog.store_path)
    out = subprocess.run(ONLY_STORE + prog.argv, input=b"null", capture_output=True, timeout=30)
    assert out.stdout == b'"alive"'
    # Releasing the stage's root lets the collector reclaim it.
    assert reg.release("e" * 64) == 1
    subprocess.run(["nix-collect-garbage", "-d"], capture_output=True, timeout=300)
    assert not os.path.exists(prog.store_path)
