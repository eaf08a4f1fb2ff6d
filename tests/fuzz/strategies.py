"""What hostile clients send: JSON of every awkward kind, near-valid graphs,
stage specs, types, run options and events, and raw HTTP bytes.

Budgets: each fuzz test runs ``budget(n)`` examples; ``NOETHER_FUZZ_SCALE``
multiplies them (CI runs the default, a developer may run 10x overnight).
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import strategies as st

from noether_nix.model.types import KIND_NAMES
from noether_nix.stdlib.registry import CATEGORY

SCALE = float(os.environ.get("NOETHER_FUZZ_SCALE", "1"))


def budget(n: int) -> int:
    return max(1, int(n * SCALE))


# ------------------------------------------------------------------ JSON

awkward_text = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", " ", "\x00", "\u2028", "é", "\U0001f600", "..", "../../etc/passwd", "%00", "%ff",
                     "a" * 300, "$.a[0]", "{{x}}", "\\", '"', "NaN", "Infinity", "-0", "1e400",
                     "text_upper", "identity", "Stage", "Any", "Text"]),
)
# What msgspec can carry in a request body (no lone surrogates, no NaN).
wire_scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 2**63, 2**64, -(2**63) - 1, 10**30]),
    st.floats(allow_nan=False, allow_infinity=False),
    awkward_text,
)
wire_json: st.SearchStrategy[Any] = st.recursive(
    wire_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(awkward_text, c, max_size=4), max_leaves=16)

# What an embedding program can hand a parser: anything JSON-shaped Python holds.
any_scalars = st.one_of(
    wire_scalars,
    st.floats(),  # NaN, infinities
    st.integers(min_value=-(10**400), max_value=10**400),
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=2),  # lone surrogates
)
any_json: st.SearchStrategy[Any] = st.recursive(
    any_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(awkward_text, c, max_size=4), max_leaves=16)


def deep(depth: int) -> Any:
    v: Any = 1
    for _ in range(depth):
        v = [v]
    return v


deep_values = st.integers(min_value=100, max_value=3000).map(deep)


def with_junk(strategy: st.SearchStrategy[Any], junk: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly ``strategy``, sometimes ``junk`` in its place."""
    return st.integers(0, 3).flatmap(lambda i: junk if i == 0 else strategy)  # one_of would weigh them alike


# ------------------------------------------------------------------ types

type_names = st.sampled_from([*KIND_NAMES, "Any", "Text", "Number", "Bool", "Null", "Bytes", "VNode", "List<Text>",
                              "Map<Text, Number>", "Record", "Nope", "", "T", "<T>"])


def _type_children(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    kinds = st.sampled_from(KIND_NAMES)
    return st.one_of(
        st.fixed_dictionaries({"kind": kinds, "value": children}),
        st.fixed_dictionaries({"kind": kinds, "value": st.lists(children, max_size=3)}),
        st.fixed_dictionaries({"kind": kinds, "value": st.dictionaries(awkward_text, children, max_size=3)}),
        st.fixed_dictionaries({"kind": st.just("Refined"), "value": st.fixed_dictionaries(
            {"base": children, "refinement": wire_json})}),
        st.fixed_dictionaries({"kind": st.just("Map"), "value": st.fixed_dictionaries(
            {"key": children, "value": children})}),
        st.dictionaries(awkward_text, children, max_size=3),
        st.lists(children, max_size=3),
    )


ntype_docs: st.SearchStrategy[Any] = st.recursive(
    st.one_of(type_names, wire_scalars), _type_children, max_leaves=10)

# ------------------------------------------------------------------ graphs

STDLIB_NAMES = sorted(CATEGORY)
PURE_NAMES = sorted(n for n, c in CATEGORY.items() if c in ("pure", "higher_order"))
stage_refs = st.one_of(st.sampled_from(STDLIB_NAMES), awkward_text, st.text("0123456789abcdef", min_size=1,
                                                                            max_size=12))


def node_strategy(refs: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    leaf = st.one_of(
        st.builds(lambda i, cfg: {"op": "Stage", "id": i, **({"config": cfg} if cfg is not None else {})},
                  refs, st.none() | st.dictionaries(awkward_text, wire_json, max_size=3)),
        st.builds(lambda v: {"op": "Const", "value": v}, wire_json),
        st.builds(lambda u, i, o: {"op": "RemoteStage", "url": u, "input": i, "output": o},
                  st.sampled_from(["http://127.0.0.1:1/x", "file:///etc/passwd", "", "ftp://x", "http://[::1"]),
                  ntype_docs, ntype_docs),
        wire_json,
    )

    def compound(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        names = st.dictionaries(awkward_text, children, max_size=3)
        kids = st.lists(children, max_size=3)
        return st.one_of(
            st.builds(lambda s: {"op": "Sequential", "stages": s}, kids),
            st.builds(lambda b: {"op": "Parallel", "branches": b}, names),
            st.builds(lambda p, t, f: {"op": "Branch", "predicate": p, "if_true": t, "if_false": f},
                      children, children, children),
            st.builds(lambda s, t: {"op": "Fanout", "source": s, "targets": t}, children, kids),
            st.builds(lambda s, t: {"op": "Merge", "sources": s, "target": t}, kids, children),
            st.builds(lambda s, n, d: {"op": "Retry", "stage": s, "max_attempts": n, "delay_ms": d}, children,
                      st.integers(-5, 5) | wire_scalars, st.none() | st.integers(0, 5)),
            st.builds(lambda b, body: {"op": "Let", "bindings": b, "body": body}, names, children),
            st.builds(lambda op, extra: {"op": op, **extra}, awkward_text, st.dictionaries(awkward_text, children,
                                                                                           max_size=2)),
        )

    return st.recursive(leaf, compound, max_leaves=8)


def graph_docs(refs: st.SearchStrategy[str] = stage_refs) -> st.SearchStrategy[Any]:
    doc = st.fixed_dictionaries({"description": awkward_text, "version": st.sampled_from(["1", "", "2"]),
                                 "root": node_strategy(refs)},
                                optional={"extra": wire_json, "deployment": wire_json})
    return with_junk(doc, wire_json)


# Graphs that mostly check and run (in-process stages that take anything), to reach the run path.
ANY_INPUT = ["identity", "to_json", "to_text", "list_dedup", "sort", "flatten", "text_upper", "text_length",
             "json_merge", "to_bool", "head", "map", "parse_json"]


def _runnable(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, min_size=1, max_size=3).map(lambda s: {"op": "Sequential", "stages": s}),
        st.dictionaries(st.sampled_from("abc"), children, min_size=1, max_size=3).map(
            lambda b: {"op": "Parallel", "branches": b}),
        st.builds(lambda s, t: {"op": "Fanout", "source": s, "targets": t}, children,
                  st.lists(children, min_size=1, max_size=2)),
        st.builds(lambda s: {"op": "Retry", "stage": s, "max_attempts": 2, "delay_ms": 0}, children),
    )


runnable_graphs = st.recursive(
    st.one_of(st.sampled_from(ANY_INPUT).map(lambda i: {"op": "Stage", "id": i}),
              wire_json.map(lambda v: {"op": "Const", "value": v})),
    _runnable, max_leaves=5).map(lambda root: {"description": "fuzz", "version": "1", "root": root})

# ------------------------------------------------------------------ specs, options, events

effects = st.lists(st.one_of(
    st.sampled_from(["Pure", "Fallible", "NonDeterministic", "Network", "Process", "Llm", "Cost", "FsRead",
                     "FsWrite", "Unknown", "nope"]),
    st.builds(lambda k, p: {"effect": k, "path": p}, st.sampled_from(["FsRead", "FsWrite", "Cost", "Llm"]),
              awkward_text | wire_scalars),
    wire_json), max_size=4)

spec_docs = with_junk(st.fixed_dictionaries(
    {"name": awkward_text, "input": ntype_docs, "output": ntype_docs},
    optional={"description": awkward_text, "effects": effects, "tags": st.lists(awkward_text, max_size=3),
              "implementation": st.one_of(
                  st.sampled_from(["def execute(x):\n    return x\n", "def nope(:", "", "print(1)"]),
                  st.fixed_dictionaries({"language": st.sampled_from(["python", "bash", "javascript", "cobol", ""]),
                                         "code": st.sampled_from(["def execute(x):\n    return x\n", "echo",
                                                                  "def f(", ""])}),
                  wire_json),
              "examples": st.lists(st.fixed_dictionaries({"input": wire_json, "output": wire_json}) | wire_json,
                                   max_size=2),
              "id": st.text("0123456789abcdef", max_size=64), "signature": wire_json, "lifecycle": wire_json}),
    wire_json)

OPTION_KEYS = ["budget_cents", "allow_effects", "allow_capabilities", "timeout_secs", "max_output_bytes", "isolate",
               "optimize", "cache", "allow_unsigned", "refinement_checks", "detach", "detached", "allow_read",
               "allow_write", "env", "stdin", "nope"]
option_values = st.one_of(wire_scalars, st.lists(awkward_text, max_size=3),
                          st.dictionaries(awkward_text, awkward_text | wire_scalars, max_size=3),
                          st.sampled_from(["auto", "bwrap", "none", "/", "/tmp", "/proc/self", "relative"]))
option_docs = with_junk(st.dictionaries(st.sampled_from(OPTION_KEYS) | awkward_text, option_values, max_size=5),
                        wire_json)

EVENT_TAGS = ["run_accepted", "stage_started", "stage_finished", "stage_output", "warning", "run_finished", "nope"]
EVENT_KEYS = ["run_id", "composition_id", "started_at", "effects", "node_path", "stage_id", "name", "attempt",
              "status", "wall_ms", "message", "text", "code", "output", "error", "duration_ms", "trace", "cache"]
event_docs = with_junk(st.builds(lambda tag, rest: {"event": tag, **rest}, st.sampled_from(EVENT_TAGS),
                                 st.dictionaries(st.sampled_from(EVENT_KEYS), wire_json, max_size=5)), any_json)
