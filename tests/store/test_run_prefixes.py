"""`noether trace` takes a unique prefix of a run id or a composition id."""

from __future__ import annotations

from pathlib import Path

import pytest

from noether_nix.errors import NoetherError
from noether_nix.service.context import Context, me
from noether_nix.service.endpoints import Ref
from noether_nix.service.graph import find_run
from noether_nix.store.runs import RunStore
from noether_nix.store.stages import StageStore


def test_unique_prefixes_find_runs_and_ambiguous_ones_list_them(noether_home: Path) -> None:
    store = StageStore(noether_home / "noether.db")
    runs = RunStore(store.conn)
    for run_id, comp in (("aa11", "c0ffee01"), ("aa22", "c0ffee01"), ("bb33", "d00d0001")):
        runs.start(run_id + "0" * 28, comp + "0" * 56)
        runs.finish(run_id + "0" * 28, "ok", {"stages": []}, [], 0)
    ctx = Context(me(), make_engine=lambda: None, store=store)  # type: ignore[arg-type,return-value]
    assert find_run(ctx, Ref("bb3"))["run_id"].startswith("bb33")
    assert find_run(ctx, Ref("aa2"))["run_id"].startswith("aa22")
    assert find_run(ctx, Ref("d00d"))["run_id"].startswith("bb33")  # a composition: its latest run
    with pytest.raises(NoetherError) as ei:
        find_run(ctx, Ref("aa"))
    assert ei.value.code == "ambiguous_reference"
    assert str(ei.value).startswith("aa: 'aa' is the start of 2 ids: run ")  # the latest first
    assert "run aa2200000000" in str(ei.value) and "run aa1100000000" in str(ei.value)
    assert ei.value.hint == "give more of the id"
    with pytest.raises(NoetherError) as ei:
        find_run(ctx, Ref("ee"))
    assert (ei.value.code, ei.value.hint) == ("trace_not_found", "`noether runs` lists recent runs")
