"""Crashes the registry's fuzzer found outside the registry, kept as regressions."""

from __future__ import annotations

import pytest

from noether_nix.errors import NoetherError
from noether_nix.graph.ast import parse_graph


@pytest.mark.parametrize("op", [[], {}, 1, None])
def test_a_node_whose_op_is_not_a_string_is_a_usage_error(op: object) -> None:
    # It raised TypeError (unhashable type), a 500 from the registry and the daemon.
    with pytest.raises(NoetherError) as e:
        parse_graph({"description": "x", "version": "1", "root": {"op": op}})
    assert e.value.path == "root.op"
