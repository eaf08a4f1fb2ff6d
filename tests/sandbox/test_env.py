"""A run's environment reaches only the sandboxed program (issue 13,
finding 2; CVE-2021-21261 class: environment injection into the host side).

bwrap's own environment is read by the host's dynamic loader before any
namespace exists; it is always empty. The run's variables travel in bwrap's
``--args`` memfd, so they are in neither bwrap's environment nor any argv.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import trio

from noether_nix.engine.engine import Engine, RunOptions
from noether_nix.errors import NoetherError
from noether_nix.sandbox.env import check_env
from noether_nix.sandbox.supervisor import Status
from tests.sandbox.conftest import Probe, while_running

ENV_GET = {"description": "e", "version": "1", "root": {"op": "Stage", "id": "env_get"}}


@pytest.mark.parametrize("name", ["LD_PRELOAD", "LD_AUDIT", "LD_LIBRARY_PATH", "ld_preload", "GCONV_PATH",
                                  "MALLOC_CHECK_", "GLIBC_TUNABLES", "PYTHONPATH", "PYTHONSTARTUP",
                                  "NODE_OPTIONS", "NODE_PATH", "BASH_ENV", "ENV", "PERL5OPT", "BASH_FUNC_x%%"])
async def test_cve_2021_21261_loader_and_interpreter_variables_are_refused_before_the_run(
        name: str, tmp_path: Path) -> None:
    engine = Engine()
    with pytest.raises(NoetherError) as refused:
        await engine.run(ENV_GET, {"name": name}, RunOptions(env={name: str(tmp_path / "evil.so")}))
    assert refused.value.code == "env_not_allowed", refused.value.to_dict()
    assert name in refused.value.message
    assert engine.runs.recent() == []  # refused before anything ran or was stored


async def test_the_sandbox_layer_refuses_them_too(probe: Probe) -> None:
    # Whoever calls the sandbox layer (not only the engine) cannot hand bwrap a loader variable.
    with pytest.raises(NoetherError) as refused:
        await probe("print(1)", env={"LD_PRELOAD": "/nix/store/x/lib.so"})
    assert refused.value.code == "env_not_allowed"


@pytest.mark.parametrize(("env", "code"), [
    ({"1ABC": "x"}, "env_not_allowed"), ({"A-B": "x"}, "env_not_allowed"), ({"A=B": "x"}, "env_not_allowed"),
    ({"": "x"}, "env_not_allowed"), ({"OK": "a\0b"}, "invalid_env"), ({"OK": "\udcff"}, "invalid_env"),
    ({"OK": "x" * 40_000}, "invalid_env"), ({f"V{i}": "x" for i in range(300)}, "invalid_env"),
])
def test_names_and_values_are_checked(env: dict[str, str], code: str) -> None:
    with pytest.raises(NoetherError) as refused:
        check_env(env)
    assert refused.value.code == code and refused.value.exit_code == 2


async def test_cve_2021_21261_a_runs_variable_reaches_the_program_never_bwrap(probe: Probe) -> None:
    secret = f"s3cret-{uuid.uuid4().hex}"
    marker = f"noether-env-{uuid.uuid4().hex}"
    seen: dict[int, tuple[bytes, bytes]] = {}

    async def watch() -> None:
        for p in await while_running(marker):
            if p.cmdline()[0].endswith("bwrap"):
                seen[p.pid] = (Path(f"/proc/{p.pid}/environ").read_bytes(), Path(f"/proc/{p.pid}/cmdline").read_bytes())

    async with trio.open_nursery() as n:
        n.start_soon(watch)
        r = await probe("import json, os, time\ntime.sleep(1.5)\nprint(json.dumps(os.environ.get('NOETHER_SECRET')))",
                        env={"NOETHER_SECRET": secret, "VALUE_LIKE_AN_OPTION": "--bind / /"}, marker=marker)
    assert r.status is Status.OK and r.output == secret
    assert seen, "bwrap was not seen running"
    for environ, cmdline in seen.values():
        assert secret.encode() not in environ and secret.encode() not in cmdline
        assert b"NOETHER_SECRET" not in environ and b"--setenv" not in cmdline
    outer = min(seen)
    assert seen[outer][0] == b"", "bwrap must start with an empty environment"


async def test_values_that_look_like_options_stay_values(probe: Probe) -> None:
    r = await probe("import json, os\nprint(json.dumps(os.environ['X']))", env={"X": "--ro-bind / /host"})
    assert r.output == "--ro-bind / /host"


def test_noether_run_env_refuses_them_with_the_code(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    graph = tmp_path / "env.graph.json"
    graph.write_text(json.dumps(ENV_GET))
    done = subprocess.run([sys.executable, "-m", "noether_nix.cli.main", "run", "--json", str(graph), "--input",
                           '{"name": "LD_AUDIT"}', "--env", "LD_AUDIT=/tmp/evil.so"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert json.loads(done.stdout)["error"]["code"] == "env_not_allowed"
