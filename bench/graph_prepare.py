"""Parse + resolve + type-check + pre-flight + plan a generated graph.

Usage: .venv/bin/python bench/graph_prepare.py [NODES ...]   (default: 5000 10000 20000)

The graph is a Sequential of Parallel blocks whose branches are short
Sequentials of stdlib stages (text_upper / text_lower / identity), so
resolution, unification (identity is generic) and subtyping all run. It
uses a throwaway $NOETHER_HOME and prints the median of 5 runs per size.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from typing import Any


def build(nodes: int) -> dict[str, Any]:
    blocks = []
    count = 1  # the root Sequential
    while count < nodes:
        branches = {}
        for b in range(4):
            chain = [{"op": "Stage", "id": name} for name in ("text_upper", "identity", "text_lower")]
            branches[f"b{b}"] = {"op": "Sequential", "stages": chain}
            count += 4
        # Merge the Record of branch outputs back to one Text.
        blocks.append({"op": "Parallel", "branches": branches})
        blocks.append({"op": "Const", "value": "next"})
        count += 2
    return {"description": "bench", "version": "1", "root": {"op": "Sequential", "stages": blocks}}


def main(argv: list[str]) -> int:
    sizes = [int(a) for a in argv] or [5000, 10000, 20000]
    os.environ["NOETHER_HOME"] = tempfile.mkdtemp(prefix="noether-bench-")
    from noether_nix.graph.ast import walk
    from noether_nix.graph.check import CheckOptions, prepare
    from noether_nix.store.stages import StageStore
    from noether_nix.store.stdlib_seed import ensure_stdlib

    store = StageStore()
    ensure_stdlib(store)
    print(f"{'nodes':>8} {'median_ms':>10} {'us/node':>8}")
    for n in sizes:
        raw = build(n)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            p = prepare(raw, store=store, options=CheckOptions())
            times.append(time.perf_counter() - t0)
        actual = len(walk(p.graph.root))
        med = statistics.median(times)
        print(f"{actual:>8} {med * 1000:>10.1f} {med / actual * 1e6:>8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
