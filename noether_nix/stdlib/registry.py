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

from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from noether_nix.model.jcs import value_hash
from noether_nix.stdlib import collections, control, data, generic, io, scalar, text, ui, validation
from noether_nix.stdlib._shapes import Impl, StageFailure

__all__ = ["CATEGORY", "HIGHER_ORDER", "PROCESS", "PURE", "SANDBOXED", "STDLIB", "STREAM", "WHERE", "Category", "Entry", "Impl", "StageFailure", "Where", "sandboxed_source"]

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


class Where(msgspec.Struct, frozen=True):
    """How the stages of one category run: read by pre-flight (does it need
    an isolation backend?), by the engine's dispatch and by the docs."""

    #: It runs in a bwrap sandbox (its own, or the run's process host), so a
    #: host without a usable one refuses it before the run.
    sandboxed: bool
    runs: str
    reaches: str


WHERE: Final[dict[Category, Where]] = {
    "pure": Where(False, "in the engine's process, plain Python", "nothing: values in, values out"),
    "higher_order": Where(False, "the engine: each named stage passes the run's policy, then runs like a graph "
                          "stage", "what the named stages can reach"),
    "sandboxed": Where(True, "a sandbox (Python, standard library only)", "what its walls grant"),
    "stream": Where(False, "the engine, on the run's own streams", "the client's streams, never the daemon's"),
    "process": Where(True, "the run's process host: one sandbox per run", "only processes this run spawned"),
    "kv": Where(False, "the engine: the store database's kv table", "that table"),
    "store": Where(False, "the engine, against its own store and traces", "the store"),
    "llm": Where(False, "refused: no_llm_provider", "nothing"),
    "arrow": Where(True, "a sandbox with pyarrow pinned to the arrow extra's version", "nothing"),
}


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    """One stdlib stage: how it runs and what it needs from the run."""

    name: str
    category: Category
    #: The in-process implementation of a ``pure`` stage.
    impl: Impl | None = None
    #: Its one wall is the run's file grant that holds the file it names
    #: (``read``: --allow-read or --allow-write; ``write``: --allow-write).
    grant: Literal["read", "write"] | None = None
    #: It sees exactly the run's environment variables (``--env``), none of the daemon's.
    run_env: bool = False
    #: Only a run whose requester may change the store may call it.
    writers_only: bool = False
    #: A requester who may not change the store sees only its own part of
    #: the state it touches (its kv namespace, its own runs' traces).
    per_peer: bool = False
    #: Its work can grow much faster than its input (a regular expression can
    #: backtrack for ever on a short text; a replacement multiplies lengths; a
    #: CSV writes every column of every record): it never runs on the daemon's
    #: event loop, however small its input.
    off_loop: bool = False

    @property
    def sandboxed(self) -> bool:
        return WHERE[self.category].sandboxed

    @property
    def inline(self) -> bool:
        """A Pure stage whose implementation may run on the caller's thread: its work grows
        with its input only (not ``off_loop``). The fast path and runs without an event
        loop take these."""
        return self.category == "pure" and self.impl is not None and not self.off_loop


def _entries() -> dict[str, Entry]:
    table: dict[str, Entry] = {}
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
    special: dict[str, dict[str, Any]] = {
        "read_file": {"grant": "read"},
        "write_file": {"grant": "write"},
        "env_get": {"run_env": True},
        "store_add": {"writers_only": True},
        "trace_read": {"per_peer": True},
        **{name: {"per_peer": True} for name in _KV},
        **{name: {"off_loop": True} for name in ("regex_match", "regex_replace", "text_replace", "text_template",
                                               "json_schema_validate", "csv_write")},
    }
    for category, names in groups:
        for name in names:
            if name in table:
                raise RuntimeError(f"stdlib stage {name} is listed as both {table[name].category} and {category}")
            table[name] = Entry(name=name, category=category, impl=PURE.get(name) if category == "pure" else None,
                                **special.get(name, {}))
    return table


#: Every one of the 85 stdlib stages, by name.
STDLIB: Final[dict[str, Entry]] = _entries()
CATEGORY: Final[dict[str, Category]] = {name: e.category for name, e in STDLIB.items()}


#: The programs of the sandboxed stages, shipped in the package (read from beside this file:
#: ``importlib.resources`` costs ~6 ms of start-up for what is a plain directory here).
_SANDBOXED = Path(__file__).with_name("sandboxed")


def sandboxed_source(name: str) -> str:
    """The Python source (``def execute(input)``, standard library only) of a sandboxed stage."""
    if name not in SANDBOXED and name not in _ARROW:
        raise KeyError(f"{name} is not a sandboxed stdlib stage")
    if name in _HTTP:  # one program, three methods
        return _SANDBOXED.joinpath("http.py").read_text("utf-8") + f'\nMETHOD = "{_HTTP[name]}"\n'
    return _SANDBOXED.joinpath(f"{name}.py").read_text("utf-8")


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


def remote_call_program() -> tuple[str, str]:
    """``(program_id, python code)`` of the sandboxed caller behind RemoteStage nodes."""
    code = _SANDBOXED.joinpath("remote_call.py").read_text("utf-8")
    return "remote-call-" + value_hash(code)[:52], code


def process_host_source() -> str:
    """The program of the per-run sandbox that answers the process stages."""
    return _SANDBOXED.joinpath("process_host.py").read_text("utf-8")
