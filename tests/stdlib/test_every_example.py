"""Every catalog example of every non-Pure stage, through the engine.

The Pure stages' 225 examples are in ``test_pure_examples.py``. Here the
other 40 stages run their examples as graphs (sandboxed where they must
be). Those whose examples pass here are asserted to pass; every other stage
is listed in ``CANNOT_PASS`` with why, and asserted to fail for exactly that
reason (the error code the engine gives), so the list cannot go stale.
Where the behaviour is tested otherwise, the reason says where.
"""

from __future__ import annotations

import pytest

from noether_nix.engine.engine import Engine, RunOptions
from noether_nix.model.jcs import jcs
from noether_nix.stdlib.registry import CATEGORY
from tests.stdlib.conftest import load_catalog

CATALOG = {s["name"]: s for s in load_catalog()}

#: Stages whose every example passes here as written.
ALL_PASS = ("stdout_write", "type_check", "text_hash", "kv_set", "kv_get", "kv_delete")
#: The kv examples are a sequence: reading and deleting find what kv_set's examples wrote.
RUN_FIRST = {"kv_get": ("kv_set",), "kv_delete": ("kv_set", "kv_get")}

_ELSEWHERE = "tests/engine/test_stdlib_dispatch.py"
#: stage → (the error code, or "differs" for a wrong output, every example gets; why).
CANNOT_PASS: dict[str, tuple[str, str]] = {
    **{name: ("stage_not_found", f"the examples name stages no store has (abc123, is_even, fast…); "
                                 f"run with real stages in {_ELSEWHERE}")
       for name in ("map", "filter", "reduce", "timeout")},
    "read_file": ("path_not_granted", f"host paths (/tmp/test.txt, data.csv); read on granted temp dirs in "
                                      f"{_ELSEWHERE} and test_sandboxed.py"),
    "write_file": ("path_not_granted", "host paths; written on granted temp dirs, same files"),
    **{name: ("stage_error", "example.com is not reachable from this machine; tested against 127.0.0.1 in "
                             "test_sandboxed.py and through the sandbox in " + _ELSEWHERE)
       for name in ("http_get", "http_post", "http_put")},
    "stdin_read": ("stage_failed", "reads the run's stdin, which the examples do not give; tested with "
                                   "`run --stdin` in tests/cli/test_run_io.py"),
    **{name: ("no_llm_provider", "no LLM provider ships") for name in
       ("llm_complete", "llm_embed", "llm_classify", "llm_extract")},
    "arrow_from_records": ("differs", "the examples are placeholders (base64 of ARROW_IPC); the round trip "
                                      "is tested in " + _ELSEWHERE),
    "records_to_arrow": ("stage_error", "the inputs are those placeholders, not Arrow IPC"),
    "store_search": ("differs", "the examples list made-up stages (abc123, def456)"),
    "stage_describe": ("stage_failed", "the examples describe made-up stage IDs"),
    "trace_read": ("stage_failed", "the examples read traces of made-up compositions"),
    "store_add": ("stage_failed", "the example specs are signatures without an implementation; a runnable "
                                  "spec is added in " + _ELSEWHERE),
    "verify_stage_content_hash": ("stage_error", "made-up stages in a non-canonical shape; all 85 catalog "
                                                 "stages verify in test_sandboxed.py"),
    **{name: ("stage_failed", "the examples name pids this run never spawned; real processes in "
                              + _ELSEWHERE) for name in ("wait_process", "signal_process", "kill_process")},
}
#: Mixed: some examples pass, the others fail for the reason given.
SOME_PASS: dict[str, str] = {
    "retry": "the examples name made-up stages ('abc'); one short name is a prefix of a real stage ID",
    "fallback": "the examples name made-up stages ('primary'); some short names match many real stages",
    "race": "as fallback",
    "parallel": "as fallback; one example's names happen to resolve",
    "kv_exists": "the examples depend on keys written before them that no example writes",
    "kv_list": "as kv_exists",
    "verify_stage_ed25519": "two examples use made-up signatures and keys (see docs/compatibility.md)",
    "env_get": "the examples' values are one machine's (/home/user, alice); a sandbox sees the run's variables "
               "only, tested in " + _ELSEWHERE,
    "composition_verify": "the examples verify made-up stages s1, s2 (the empty one passes); real ones in "
                          + _ELSEWHERE,
    "spawn_process": "the pids and clock in the examples are one machine's; node/ruby are not in the sandbox",
}


def test_every_non_pure_stage_is_accounted_for() -> None:
    others = {n for n, c in CATEGORY.items() if c != "pure"}
    listed = set(ALL_PASS) | set(CANNOT_PASS) | set(SOME_PASS)
    assert listed == others, (others - listed, listed - others)


async def _outcomes(engine: Engine, name: str) -> list[str]:
    stage = CATALOG[name]
    graph = {"description": name, "version": "1", "root": {"op": "Stage", "id": stage["id"]}}
    out = []
    for ex in stage["examples"]:
        res = await engine.run(graph, ex["input"], RunOptions(timeout_secs=20), record=False)
        if res.status == "ok":
            out.append("ok" if jcs(res.output) == jcs(ex["output"]) else "differs")
        else:
            assert res.error is not None
            out.append(res.error["code"])
    return out


@pytest.mark.parametrize("name", ALL_PASS)
async def test_examples_pass(name: str) -> None:
    engine = Engine()
    for before in RUN_FIRST.get(name, ()):
        await _outcomes(engine, before)
    assert await _outcomes(engine, name) == ["ok"] * len(CATALOG[name]["examples"])


@pytest.mark.parametrize("name", sorted(CANNOT_PASS))
async def test_examples_that_cannot_pass_fail_for_the_listed_reason(name: str) -> None:
    code, _why = CANNOT_PASS[name]
    engine = Engine()
    assert await _outcomes(engine, name) == [code] * len(CATALOG[name]["examples"])


@pytest.mark.parametrize("name", sorted(SOME_PASS))
async def test_mixed_examples_never_fake_a_result(name: str) -> None:
    # Whatever passes passes for real; nothing returns an example's output
    # for an example it could not run.
    engine = Engine()
    outcomes = await _outcomes(engine, name)
    assert len(outcomes) == len(CATALOG[name]["examples"])
    assert set(outcomes) <= {"ok", "differs", "stage_not_found", "ambiguous_reference", "retry_exhausted",
                             "all_failed", "stage_failed",
                             "stage_error"}, outcomes
    assert set(outcomes) != {"ok"}, f"{name} passes every example now: move it to ALL_PASS"
