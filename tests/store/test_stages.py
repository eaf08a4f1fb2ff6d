"""The stage store: content addressing, lifecycle rules, lookups, durability."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from noether_nix.errors import NoetherError
from noether_nix.model.stage import Stage, stage_from_spec
from noether_nix.store.stages import StageStore


def make(code_body: str = "x + 1", name: str = "add1") -> Stage:
    return stage_from_spec(
        {"name": name, "input": "Number", "output": "Number",
         "implementation": f"def execute(x):\n    return {code_body}\n"}
    )


def snapshot(store: StageStore) -> list[tuple[object, ...]]:
    return store.conn.execute("SELECT id, lifecycle, successor_id, content FROM stages ORDER BY id").fetchall()


def test_adding_twice_is_a_no_op() -> None:
    store = StageStore()
    s = make()
    assert store.add(s, activate=True).created
    before = snapshot(store)
    again = store.add(s, activate=True)
    assert not again.created
    assert snapshot(store) == before


def test_new_active_implementation_deprecates_the_previous_one() -> None:
    store = StageStore()
    old, new = make("x + 1"), make("1 + x")
    store.add(old, activate=True)
    res = store.add(new, activate=True)
    assert res.supersedes == [old.id]
    got = store.get(old.id)
    assert got is not None and got.state == "Deprecated" and got.successor_id == new.id
    assert [s.id for s in store.by_signature(new.signature_id or "") if s.state == "Active"] == [new.id]


@pytest.mark.parametrize(
    ("start", "to", "ok"),
    [
        ("Draft", "Active", True),
        ("Draft", "Tombstone", False),
        ("Active", "Tombstone", True),
        ("Active", "Draft", False),
        ("Tombstone", "Active", False),
    ],
)
def test_lifecycle_transitions(start: str, to: str, ok: bool) -> None:
    store = StageStore()
    s = make()
    store.add(s, activate=start != "Draft")
    if start == "Tombstone":
        store.transition(s.id, "Tombstone")
    before = snapshot(store)
    if ok:
        store.transition(s.id, to)  # type: ignore[arg-type]
        got = store.get(s.id)
        assert got is not None and got.state == to
    else:
        with pytest.raises(NoetherError) as ei:
            store.transition(s.id, to)  # type: ignore[arg-type]
        assert ei.value.code == "invalid_transition"
        assert f"cannot move a {start} stage to {to}" in ei.value.message
        assert snapshot(store) == before


def test_deprecate_needs_an_existing_successor() -> None:
    store = StageStore()
    s = make()
    store.add(s, activate=True)
    with pytest.raises(NoetherError) as ei:
        store.transition(s.id, "Deprecated", successor_id="f" * 64)
    assert ei.value.code == "stage_not_found"
    got = store.get(s.id)
    assert got is not None and got.state == "Active"


def test_lookups_prefix_name_signature_and_ambiguity() -> None:
    store = StageStore()
    stages = [make(f"x + {i}", name=f"s{i}") for i in range(40)]
    for s in stages:
        store.add(s, activate=True)
    target = stages[7]
    assert store.resolve(target.id).id == target.id
    assert store.resolve(target.id[:12]).id == target.id
    assert store.resolve("s7").id == target.id
    assert store.resolve(target.signature_id or "").id == target.id
    # With 40 ids some single hex digit prefixes must collide.
    first_chars = [s.id[0] for s in stages]
    dup = next(c for c in first_chars if first_chars.count(c) > 1)
    with pytest.raises(NoetherError) as ei:
        store.resolve(dup)
    assert ei.value.code == "ambiguous_reference"
    assert len(ei.value.details["candidates"]) == first_chars.count(dup)


def test_name_lookup_prefers_active() -> None:
    store = StageStore()
    old, new = make("x + 1"), make("1 + x")
    store.add(old, activate=True)
    store.add(new, activate=True)
    assert store.resolve("add1").id == new.id


def _writer(path: str, n: int, offset: int) -> None:
    store = StageStore(Path(path))
    for i in range(n):
        store.add(make(f"x + {offset + i}", name=f"w{offset + i}"), activate=True)


def test_concurrent_processes_share_the_store(tmp_path: Path) -> None:
    db = tmp_path / "noether.db"
    StageStore(db)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(db), 15, k * 100)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(StageStore(db).all()) == 45


def test_committed_data_survives_a_killed_writer(tmp_path: Path) -> None:
    db = tmp_path / "noether.db"
    ctx = multiprocessing.get_context("spawn")
    p = ctx.Process(target=_writer, args=(str(db), 5, 0))
    p.start()
    p.join(60)
    # A second process dies holding an open transaction: nothing committed is lost.
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("DELETE FROM stages")
    del conn  # never committed
    assert len(StageStore(db).all()) == 5
