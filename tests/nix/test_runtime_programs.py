"""Offline runtimes and per-stage programs, built for real in the Nix store."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest
import trio

from noether_nix.errors import NoetherError
from noether_nix.nix.doctor import describe
from noether_nix.nix.programs import build_stage_program, build_stage_program_async
from noether_nix.nix.registry import ProgramRegistry
from noether_nix.nix.runtime import ensure_runtime
from noether_nix.paths import db_path

SANDBOX = ["bwrap", "--unshare-all", "--die-with-parent", "--proc", "/proc", "--dev", "/dev"]
ONLY_STORE = [*SANDBOX, "--ro-bind", "/nix/store", "/nix/store", "--"]
HAS_NODE = any(os.path.exists(p) for p in ("/usr/bin/node", "/usr/local/bin/node"))


def run_in_store(argv: list[str], stdin: bytes = b"null") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(ONLY_STORE + argv, input=stdin, capture_output=True, timeout=30)


@pytest.mark.parametrize("language", ["python", "bash"])
def test_runtime_runs_with_only_the_store_visible(language: str) -> None:
    rt = ensure_runtime(language)
    assert rt.store_path.startswith("/nix/store/") and rt.source == "host-import"
    probe = {"python": [rt.interpreter, "-c", "import os, ssl, sqlite3, json; print(os.path.exists('/usr'))"],
             "bash": [rt.interpreter, "-c", "[ -e /usr ] && echo True || echo False"]}[language]
    out = subprocess.run(ONLY_STORE + probe, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_runtime_is_shared_by_every_home(monkeypatch: pytest.MonkeyPatch) -> None:
    first = ensure_runtime("python")
    monkeypatch.setenv("NOETHER_HOME", tempfile.mkdtemp(prefix="noether-other-home-"))
    monkeypatch.setenv("PATH", "/nonexistent")  # an import would need ldd, patchelf and nix-build
    assert ensure_runtime("python") == first


@pytest.mark.parametrize(
    ("language", "code", "stdin", "expected"),
    [
        ("python", "def execute(x):\n    print('chatter goes to stderr')\n    return {'n': x['n'] + 1}\n",
         b'{"n": 1}', b'{"n": 2}'),
        ("bash", "execute() {\n  printf '%s' \"$1\" | tr a-z A-Z\n}\n", b'"abc"', b'"ABC"'),
        pytest.param("javascript", "function execute(x) { console.log('noise'); return x.map(n => n * 2); }\n",
                     b"[1,2]", b"[2,4]", marks=pytest.mark.skipif(not HAS_NODE, reason="no host node")),
    ],
)
def test_stage_program_runs_in_bwrap_with_only_the_store(language: str, code: str, stdin: bytes,
                                                        expected: bytes) -> None:
    reg = ProgramRegistry(db_path())
    prog = build_stage_program(f"{language}test" * 4, language, code, registry=reg)
    assert "noether-stage-" in prog.store_path
    out = run_in_store(prog.argv, stdin)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected


def test_program_needs_only_its_closure() -> None:
    prog = build_stage_program("f" * 64, "python", "def execute(x):\n    return sorted(x)\n",
                               registry=ProgramRegistry(db_path()))
    binds = [a for p in prog.closure for a in ("--ro-bind", p, p)]
    out = subprocess.run([*SANDBOX, *binds, "--", *prog.argv], input=b"[3,1,2]", capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"[1, 2, 3]" or out.stdout == b"[1,2,3]"


def test_python_wrapper_decodes_input_once() -> None:
    # Upstream decodes a string input twice ("42" arrives as 42) and turns null into {}.
    code = "from __future__ import annotations\n\ndef execute(x: object) -> list[object]:\n" \
           "    return [type(x).__name__, x]\n"
    prog = build_stage_program("a1" * 32, "python", code, registry=ProgramRegistry(db_path()))
    assert run_in_store(prog.argv, b'"42"').stdout == b'["str", "42"]'
    assert run_in_store(prog.argv, b"null").stdout == b'["NoneType", null]'


def test_stage_error_goes_to_stderr_with_exit_1() -> None:
    prog = build_stage_program("a2" * 32, "python", "def execute(x):\n    raise ValueError('bad input')\n",
                               registry=ProgramRegistry(db_path()))
    out = run_in_store(prog.argv, b"1")
    assert out.returncode == 1 and out.stdout == b""
    assert b"ValueError: bad input" in out.stderr


@pytest.mark.parametrize(
    ("language", "code", "needle"),
    [("python", "def execute(x)\n    return x\n", "SyntaxError"),
     ("bash", "execute() {\n  echo '1'\n", "syntax error"),
     pytest.param("javascript", "function execute(x) { return x; \n", "SyntaxError",
                  marks=pytest.mark.skipif(not HAS_NODE, reason="no host node"))],
)
def test_code_that_does_not_compile_fails_the_build_with_the_reason(language: str, code: str, needle: str) -> None:
    with pytest.raises(NoetherError) as ei:
        build_stage_program(f"bad{language}" * 6, language, code, registry=ProgramRegistry(db_path()))
    assert ei.value.code == "stage_code_invalid"
    assert needle in ei.value.message
    assert ei.value.path == f"bad{language}" * 6


def test_second_build_is_a_cache_hit_without_nix(monkeypatch: pytest.MonkeyPatch) -> None:
    reg = ProgramRegistry(db_path())
    code = "def execute(x):\n    return x\n"
    first = build_stage_program("c" * 64, "python", code, registry=reg)
    monkeypatch.setenv("PATH", "/nonexistent")  # any nix-build call would now fail
    second = build_stage_program("c" * 64, "python", code, registry=reg)
    assert second.store_path == first.store_path and second.built is False
    assert second.closure == first.closure


async def test_async_builds_of_one_stage_share_one_program() -> None:
    reg = ProgramRegistry(db_path())
    results = []

    async def build() -> None:
        results.append(await build_stage_program_async("b" * 64, "python", "def execute(x):\n    return 7\n",
                                                       registry=reg))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(build)
    assert len({p.store_path for p in results}) == 1
    assert sum(p.built for p in results) <= 1  # at most one nix-build, the rest are hits


def test_nix_missing_is_classified(monkeypatch: pytest.MonkeyPatch) -> None:
    ensure_runtime("python")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(NoetherError) as ei:
        build_stage_program("d" * 64, "python", "def execute(x):\n    return 1\n",
                            registry=ProgramRegistry(db_path()))
    assert ei.value.code == "nix_missing"
    assert ei.value.hint and "nix-bin" in ei.value.hint


def test_nixpkgs_source_offline_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOETHER_RUNTIME_SOURCE", "nixpkgs")
    monkeypatch.setenv("NIX_PATH", "")  # no <nixpkgs>, as on this machine and in CI
    assert describe()["runtime_source"] == "nixpkgs"
    with pytest.raises(NoetherError) as ei:
        ensure_runtime("python")
    assert ei.value.code == "nixpkgs_unavailable"
    assert "host-import" in (ei.value.hint or "")
    monkeypatch.setenv("NOETHER_RUNTIME_SOURCE", "conda")
    with pytest.raises(NoetherError) as bad:
        ensure_runtime("python")
    assert bad.value.code == "invalid_config" and bad.value.path == "NOETHER_RUNTIME_SOURCE"
    assert "host-import" in bad.value.message and "nixpkgs" in bad.value.message


def test_doctor_describes_the_nix_layer() -> None:
    ensure_runtime("python")
    d = describe()
    assert d["ok"] is True and d["problems"] == []
    assert d["runtime_source"] == "host-import"
    assert d["runtimes"]["python"] == ensure_runtime("python").store_path
    assert "2." in d["version"]


def test_programs_survive_garbage_collection() -> None:
    reg = ProgramRegistry(db_path())
    prog = build_stage_program("e" * 64, "python", "def execute(x):\n    return 'alive'\n", registry=reg)
    gc = subprocess.run(["nix-collect-garbage", "-d"], capture_output=True, text=True, timeout=300)
    assert gc.returncode == 0, gc.stderr
    assert os.path.exists(prog.store_path)
    out = run_in_store(prog.argv)
    assert out.stdout == b'"alive"'
    # Releasing the stage's root lets the collector reclaim it.
    assert reg.release("e" * 64) == 1
    subprocess.run(["nix-collect-garbage", "-d"], capture_output=True, timeout=300)
    assert not os.path.exists(prog.store_path)
    # The runtime is rooted on its own and survives both collections.
    assert os.path.exists(ensure_runtime("python").interpreter)


def test_debian_node_externalized_builtins_are_carried_and_renamed(tmp_path: Path) -> None:
    """Debian's node (--shared-builtin-*-path) reads /usr/share/nodejs/… at start: the import copies those
    files into the runtime and renames each C string, in place, to the launcher's fd. The end-to-end run
    with Debian's own node 18 is in tests/system (test_javascript_examples)."""
    from noether_nix.nix.runtime import NODE_BUILTINS_FD, externalize_node_builtins

    host = tmp_path / "host"
    for rel, text in (("acorn/dist/acorn.js", "acorn"), ("undici/undici-fetch.js", "undici")):
        (host / "usr/share/nodejs" / rel).parent.mkdir(parents=True, exist_ok=True)
        (host / "usr/share/nodejs" / rel).write_text(text)
    staging = tmp_path / "staging"
    (staging / "bin").mkdir(parents=True)
    (staging / "lib").mkdir()
    (staging / "bin/node").write_bytes(b"\x7fELF main")
    config = b'"NODE_SHARED_BUILTIN_ACORN_PATH=/usr/share/nodejs/acorn/dist/acorn.js", '
    lib = (b"\x7fELF\x00Cannot load externalized builtin\x00/usr/share/nodejs/acorn/dist/acorn.js\x00\x00"
           b"internal/deps/acorn\x00/usr/share/nodejs/undici/undici-fetch.js\x00" + config)
    (staging / "lib/libnode.so.108").write_bytes(lib)
    assert externalize_node_builtins(staging, host)
    patched = (staging / "lib/libnode.so.108").read_bytes()
    assert len(patched) == len(lib)  # in place: nothing moves
    fd = f"/proc/self/fd/{NODE_BUILTINS_FD}/".encode()
    assert b"\x00" + fd + b"acorn/dist/acorn.js\x00" in patched
    assert b"\x00" + fd + b"undici/undici-fetch.js\x00" in patched
    assert patched.endswith(config)  # process.config's JSON is left alone
    assert (staging / "share/nodejs/acorn/dist/acorn.js").read_text() == "acorn"
    assert (staging / "share/nodejs/undici/undici-fetch.js").read_text() == "undici"
    assert (staging / "bin/.node-wrapped").read_bytes() == b"\x7fELF main" and not (staging / "bin/node").exists()

    # A builtin the host lacks is an import error naming it, not a node that aborts in every sandbox.
    (host / "usr/share/nodejs/undici/undici-fetch.js").unlink()
    (staging / "bin/.node-wrapped").rename(staging / "bin/node")
    (staging / "lib/libnode.so.108").write_bytes(lib)
    with pytest.raises(NoetherError, match=r"undici-fetch\.js when it starts"):
        externalize_node_builtins(staging, host)


def test_a_node_without_externalized_builtins_is_imported_as_it_is(tmp_path: Path) -> None:
    from noether_nix.nix.runtime import externalize_node_builtins

    (tmp_path / "bin").mkdir()
    (tmp_path / "lib").mkdir()
    (tmp_path / "bin/node").write_bytes(b"\x7fELF static node, no /usr/share/nodejs paths\x00")
    assert not externalize_node_builtins(tmp_path, tmp_path)
    assert (tmp_path / "bin/node").exists()
