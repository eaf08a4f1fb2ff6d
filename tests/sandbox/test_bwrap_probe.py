"""bwrap's probe (can it create its namespaces here?) runs once per user every
few minutes, not in every process: a one-shot `noether run` must not start
bwrap twice before its first stage. A stale or foreign record is not believed."""

from __future__ import annotations

import os
import time

import pytest

from noether_nix.sandbox import bwrap
from noether_nix.sandbox.bwrap import bwrap_works, find_bwrap


@pytest.fixture
def path() -> str:
    found = find_bwrap()
    assert found is not None
    bwrap_works.cache_clear()
    return found


def test_a_success_is_remembered_and_believed_without_a_probe(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert bwrap_works(path) == (True, "")
    record = bwrap._probe_record(path, None, None)
    assert record is not None and record.exists() and record.stat().st_mode & 0o777 == 0o600
    probes: list[str] = []
    monkeypatch.setattr(bwrap, "_probe", lambda p, **kw: probes.append(p) or (False, "probed"))
    bwrap_works.cache_clear()
    assert bwrap_works(path) == (True, "") and probes == []  # believed
    assert bwrap_works(path, fresh=True) == (False, "probed") and probes == [path]  # doctor probes anyway
    os.utime(record, (time.time() - bwrap.PROBE_TTL_S - 1,) * 2)
    bwrap_works.cache_clear()
    assert bwrap_works(path) == (False, "probed")  # too old to believe


def test_the_record_is_per_uid_and_per_bwrap_file(path: str) -> None:
    mine = bwrap._probe_record(path, None, None)
    other = bwrap._probe_record(path, 65534, 65534)
    assert mine is not None and other is not None and mine != other
    assert bwrap._probe_record("/nonexistent/bwrap", None, None) is None


def test_a_failure_is_never_remembered(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bwrap, "_probe", lambda p, **kw: (False, "no namespaces"))
    record = bwrap._probe_record(path, 4242, 4242)
    assert record is not None
    assert bwrap_works(path, as_uid=4242, as_gid=4242) == (False, "no namespaces")
    assert not record.exists()
