"""First build vs cached lookup of stage programs, and runtime import vs lookup.

Usage: .venv/bin/python bench/nix_program_cache.py [N]   (default N=10 fresh stages)

Uses throwaway $NOETHER_HOME directories and a throwaway runtime-root
directory, so nothing is reused from earlier runs except what is already in
/nix/store (an import of an unchanged host interpreter lands on the same
store path; the import's cost is staging, hashing and relocating). Each of
the N stages is new (a random salt), so each first build is a real
nix-build of a new derivation; the second request is a registry hit with no
nix-build call. Bounded: N builds of ~0.1 s each plus one import.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import uuid


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


def main(argv: list[str]) -> int:
    n = int(argv[0]) if argv else 10
    os.environ["NOETHER_HOME"] = tempfile.mkdtemp(prefix="noether-bench-")
    os.environ["NOETHER_NIX_GCROOTS"] = tempfile.mkdtemp(prefix="noether-bench-roots-")
    from noether_nix.nix.programs import build_stage_program
    from noether_nix.nix.registry import ProgramRegistry
    from noether_nix.nix.runtime import ensure_runtime
    from noether_nix.paths import db_path

    t0 = time.perf_counter()
    ensure_runtime("python")
    print(f"runtime import (python, no index entry)     : {ms(time.perf_counter() - t0)}")
    os.environ["NOETHER_HOME"] = tempfile.mkdtemp(prefix="noether-bench-")
    lookups = []
    for _ in range(20):
        t = time.perf_counter()
        ensure_runtime("python")
        lookups.append(time.perf_counter() - t)
    print(f"runtime lookup from another home (median/20): {ms(statistics.median(lookups))}")

    reg = ProgramRegistry(db_path())
    firsts, hits = [], []
    salt = uuid.uuid4().hex
    for i in range(n):
        sid = f"{salt}{i:032x}"[:64]
        code = f"def execute(x):\n    return ['{salt}', {i}]\n"
        t = time.perf_counter()
        p = build_stage_program(sid, "python", code, registry=reg)
        firsts.append(time.perf_counter() - t)
        assert p.built
        t = time.perf_counter()
        q = build_stage_program(sid, "python", code, registry=reg)
        hits.append(time.perf_counter() - t)
        assert not q.built and q.store_path == p.store_path
    print(f"first build of a stage program (median/{n})  : {ms(statistics.median(firsts))}"
          f"   (min {ms(min(firsts)).strip()}, max {ms(max(firsts)).strip()})")
    print(f"cached lookup, no nix-build (median/{n})     : {ms(statistics.median(hits))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
