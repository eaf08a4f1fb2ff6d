"""Which stdlib stage runs where, and the in-process implementations.

* ``PURE``: stage name → ``impl(value) -> value`` for every stage whose
  effects are Pure (optionally Fallible). Only these run in the daemon
  process. A failing call raises ``StageFailure`` with a sentence; nothing
  ever falls back to an example's output.
* ``CATEGORY``: every one of the 85 stdlib stages → how the engine runs it:

  ``pure``          in-process, ``PURE[name]``
  ``higher_order``  runs other stages by ID; the engine must interpret it
                    (input shapes in ``HIGHER_ORDER``)
  ``sandboxed``     touches the world (files, network, processes, clock,
                    environment) or declares NonDeterministic: runs in a
                    sandbox from ``sandboxed_source(name)``
  ``stream``        stdin_read / stdout_write: the run's own streams (text the
                    client sent with the run; text streamed back to it)
  ``process``       spawn/wait/signal/kill_process: the run's process host, one
                    sandbox per run that owns the processes it spawned
  ``kv``            the engine's key-value table
  ``store``         the engine's stage store / traces / type checker
  ``llm``           needs an LLM provider
  ``arrow``         Apache Arrow IPC, in a sandbox with pyarrow pinned to the
                    version the optional ``arrow`` extra installed
"""

from __future__ import annotations

from importlib import resources
from typing import Final, Literal

from noether_nix.stdlib import collections, control, data, generic, io, scalar, text, ui, validation
from noether_nix.stdlib._shapes import Impl, StageFailure

__all__ = ["CATEGORY", "HIGHER_ORDER", "PROCESS", "PURE", "SANDBOXED", "STREAM", "Category", "Impl", "StageFailure", "sandboxed_source"]

Category = Literal["pure", "higher_order", "sandboxed", "stream", "process", "kv", "store", "llm", "arrow"]

PURE: Final[dict[str, Impl]] = {
    **scalar.IMPLS,
    **collections.IMPLS,
    **control.IMPLS,
    **io.IMPLS,
    **data.IMPLS,
    **text.IMPLS,
    **validation.IMPLS,
    **ui.IMPLS,
    **generic.IMPLS,
}

#: Higher-order stages: the input record they take (stage references are
#: stage IDs, prefixes or names, as in the graph's stage references).
HIGHER_ORDER: Final[dict[str, str]] = {
    "map": "{items: List<Any>, stage_id: Text} → List<Any>: stage applied to each item, in order",
    "filter": "{items: List<Any>, stage_id: Text} → List<Any>: items for which the stage returns true",
    "reduce": "{items: List<Any>, stage_id: Text, initial: Any} → Any: acc = stage({accumulator, item})",
    "retry": "{stage_id: Text, input: Any, max_attempts: Number, delay_ms: Number|Null} → Any",
    "fallback": "{stages: List<Text>, input: Any} → Any: first stage that succeeds; fails if all fail",
    "timeout": "{stage_id: Text, input: Any, timeout_ms: Number} → Any: fails once the deadline passes",
    "race": "{stages: List<Text>, input: Any} → Any: first stage to succeed, the others cancelled",
    "parallel": "{stages: List<Text>, inputs: List<Any>} → List<Any>: stages[i](inputs[i]), same lengths",
}

#: Stages whose implementation is a Python source file run inside the sandbox.
SANDBOXED: Final[tuple[str, ...]] = (
    "read_file",
    "write_file",
    "http_get",
    "http_post",
    "http_put",
    "env_get",
    "text_hash",
    "verify_stage_content_hash",
    "verify_stage_ed25519",
)

#: Stages that read or write the run's own streams, answered by the engine.
STREAM: Final[tuple[str, ...]] = ("stdin_read", "stdout_write")

#: Upstream's process stages. A stage's own sandbox dies with it, so these are
#: answered by one sandbox per run that owns the processes (``process_host``).
PROCESS: Final[tuple[str, ...]] = ("spawn_process", "wait_process", "signal_process", "kill_process")

_HTTP = {"http_get": "GET", "http_post": "POST", "http_put": "PUT"}
_KV = ("kv_set", "kv_get", "kv_delete", "kv_exists", "kv_list")
_STORE = ("store_search", "store_add", "composition_verify", "trace_read", "stage_describe", "type_check")
_LLM = ("llm_complete", "llm_embed", "llm_classify", "llm_extract")
_ARROW = ("arrow_from_records", "records_to_arrow")


def _categories() -> dict[str, Category]:
    table: dict[str, Category] = {}
    groups: list[tuple[Category, tuple[str, ...]]] = [
        ("pure", tuple(PURE)),
        ("higher_order", tuple(HIGHER_ORDER)),
        ("sandboxed", SANDBOXED),
        ("stream", STREAM),
        ("process", PROCESS),
        ("kv", _KV),
        ("store", _STORE),
        ("llm", _LLM),
        ("arrow", _ARROW),
    ]
    for category, names in groups:
        for name in names:
            if name in table:
                raise RuntimeError(f"stdlib stage {name} is listed as both {table[name]} and {category}")
            table[name] = category
    return table


CATEGORY: Final[dict[str, Category]] = _categories()


def sandboxed_source(name: str) -> str:
    """The Python source (``def execute(input)``, standard library only) of a sandboxed stage."""
    if name not in SANDBOXED and name not in _ARROW:
        raise KeyError(f"{name} is not a sandboxed stdlib stage")
    programs = resources.files("noether_nix.stdlib.sandboxed")
    if name in _HTTP:  # one program, three methods
        return programs.joinpath("http.py").read_text("utf-8") + f'\nMETHOD = "{_HTTP[name]}"\n'
    return programs.joinpath(f"{name}.py").read_text("utf-8")


class ArrowUnavailable(Exception):
    """The ``arrow`` extra (pyarrow) is not installed next to the daemon."""


def pyarrow_version() -> str | None:
    """The pyarrow the ``arrow`` extra installed next to the daemon, if any."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pyarrow")
    except PackageNotFoundError:
        return None


def stdlib_program(stage_id: str, name: str) -> tuple[str, str] | None:
    """``(program_id, python code)`` of a stdlib stage that runs as a sandboxed
    program, or None. The program ID carries the code's hash, so a changed
    program in a new noether-nix version is a new build, never a stale one.
    Raises ``ArrowUnavailable`` for the arrow stages without the extra."""
    from noether_nix.model.jcs import value_hash

    category = CATEGORY.get(name)
    if category == "sandboxed":
        code = sandboxed_source(name)
    elif category == "arrow":
        version = pyarrow_version()
        if version is None:
            raise ArrowUnavailable(name)
        # The sandbox gets the same pyarrow as a pinned wheel.
        code = f"# requires: pyarrow=={version}\n" + sandboxed_source(name)
    else:
        return None
    return f"{stage_id}-{value_hash(code)[:16]}", code


def process_host_source() -> str:
    """The program of the per-run sandbox that answers the process stages."""
    return resources.files("noether_nix.stdlib.sandboxed").joinpath("process_host.py").read_text("utf-8")
