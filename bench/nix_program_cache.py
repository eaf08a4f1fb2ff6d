"""First build vs cached lookup of a stage program.

Usage: .venv/bin/python bench/nix_program_cache.py [N]   (default N=10 fresh stages)

Uses a throwaway $NOETHER_HOME; the runtime import is timed once, then N
fresh stage programs are built (each a new derivation) and looked up again.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import uuid


def main(argv: list[str]) -> int:
    n = int(argv[0]) if argv else 10
    os.environ["NOETHER_HOME"] = tempfile.mkdtemp(prefix="noether-bench-")
    from noether_nix.nix.programs import build_stage_program
    from noether_nix.nix.registry import ProgramRegistry
    from noether_nix.nix.runtime import ensure_runtime
    from noether_nix.paths import db_path

    t0 = time.perf_counter()
    ensure_runtime("python")
    print(f"runtime (python) ready in {(time.perf_counter() - t0) * 1000:.0f} ms "
          "(import on a fresh store, or registration of an existing one)")
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
        assert not q.built
    print(f"first build : median {statistics.median(firsts) * 1000:8.1f} ms  (n={n})")
    print(f"cached hit  : median {statistics.median(hits) * 1000:8.3f} ms  (n={n}, no nix-build call)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
