"""Every parser of outside input, fuzzed in-process (issue 13: "every parser
(graph, spec, type, options, NDJSON) fuzzed in CI with a bounded budget").

A parser either returns or raises ``NoetherError`` with a code from the
catalogue (so the daemon answers 4xx and the CLI its exit code); anything
else it raises (TypeError, RecursionError, OverflowError, UnicodeError…) is
a bug the daemon would turn into a 500.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from noether_nix.backend.daemon import event_of
from noether_nix.client import stream_line
from noether_nix.engine.engine import Engine
from noether_nix.engine.events import Event
from noether_nix.engine.options import decode_options
from noether_nix.errors import NoetherError, lookup
from noether_nix.graph.ast import parse_graph
from noether_nix.model.jcs import serde_compact
from noether_nix.model.stage import stage_from_json, stage_from_spec
from noether_nix.model.types import parse_type
from noether_nix.model.values import check_value
from tests.fuzz.strategies import (
    any_json,
    budget,
    deep_values,
    event_docs,
    graph_docs,
    ntype_docs,
    option_docs,
    spec_docs,
)


def only_noether_errors(parse: Callable[[], Any]) -> Any:
    try:
        return parse()
    except NoetherError as e:
        assert lookup(e.code) is not None, f"undeclared code {e.code!r}: {e}"
        assert e.message, e.code
        return e


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    mp = pytest.MonkeyPatch()
    mp.setenv("NOETHER_HOME", str(tmp_path_factory.mktemp("fuzz-home")))
    try:
        yield Engine()
    finally:
        mp.undo()


@settings(max_examples=budget(1000))
@given(doc=graph_docs(), input=st.one_of(any_json, deep_values), options=option_docs)
def test_graph_parse_and_prepare(engine: Engine, doc: Any, input: Any, options: Any) -> None:
    only_noether_errors(lambda: parse_graph(doc))
    opts = only_noether_errors(lambda: decode_options(options))
    if isinstance(opts, NoetherError):
        return
    only_noether_errors(lambda: engine.prepare(doc, input, opts, check_input=True))


@settings(max_examples=budget(2000))
@given(doc=spec_docs)
def test_stage_spec_and_stage_json(doc: Any) -> None:
    only_noether_errors(lambda: stage_from_spec(doc))
    only_noether_errors(lambda: stage_from_json(doc))


@settings(max_examples=budget(4000))
@given(doc=ntype_docs)
def test_type_parsing(doc: Any) -> None:
    only_noether_errors(lambda: parse_type(doc))


@settings(max_examples=budget(3000))
@given(doc=option_docs)
def test_run_options(doc: Any) -> None:
    only_noether_errors(lambda: decode_options(doc))


@settings(max_examples=budget(2000))
@given(doc=event_docs, raw=st.binary(max_size=64))
def test_ndjson_events(doc: Any, raw: bytes) -> None:
    # The client's side of a run's stream: each line read strictly, then taken as an event
    # (None: a kind this client does not know); nothing else may come out.
    lines = [raw, json.dumps(doc).encode() if _encodable(doc) else b"null"]
    for line in lines:
        decoded = only_noether_errors(lambda line=line: stream_line(line, "sock"))
        if not isinstance(decoded, NoetherError):
            out = only_noether_errors(lambda decoded=decoded: event_of(decoded))
            assert out is None or isinstance(out, (NoetherError, *get_args(Event))), out
    only_noether_errors(lambda: event_of(doc))  # what an embedding program might hand it


@settings(max_examples=budget(4000))
@given(value=st.one_of(any_json, deep_values), limit=st.integers(0, 4096))
def test_value_checks(value: Any, limit: int) -> None:
    out = only_noether_errors(lambda: check_value(value, limit, what="the value", path="v"))
    if isinstance(out, NoetherError):
        assert out.code in ("value_too_large", "value_too_deep", "non_finite_number", "invalid_text"), out.code
    else:  # what passes is JSON within the limit
        assert len(serde_compact(value)) <= limit


def _encodable(doc: Any) -> bool:
    try:
        json.dumps(doc)
    except (UnicodeEncodeError, OverflowError, TypeError, ValueError):
        return False
    return True
