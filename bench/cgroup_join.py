"""What joining a cgroup costs a sandbox start, by how long the host was quiet.

A cold sandbox joins its run's cgroup between fork and exec (launch.preexec).
Moving a process into a cgroup takes the kernel's cgroup_threadgroup_rwsem
for writing; when no migration happened for a while, that first waits for an
RCU grace period. This measures it: a fresh run cgroup (``RunCgroup.create``,
as the engine makes one) and a forked child that joins it, after a given
quiet gap; min / median / max over rounds, the gaps and both ways interleaved:

* ``procs``: the whole process through each ``cgroup.procs`` (what every start did);
* ``joiner``: ``RunCgroup.joiner``, what a start does now (on v1 the child's one
  thread through ``tasks``, which skips that lock).

    .venv/bin/python bench/cgroup_join.py [rounds]

Needs a host where RunCgroup can create cgroups (root, or a delegated tree).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from noether_nix.sandbox.cgroups import RunCgroup

GAPS_MS = (0, 5, 20, 50, 200)
WAYS = ("procs", "joiner")


def join_ms(way: str) -> tuple[float, int]:
    cg = RunCgroup.create(64 * 1024 * 1024, 64)
    if cg is None:
        raise SystemExit("no cgroup could be created here (needs root or a delegated tree)")
    procs = cg.procs_files()
    join = cg.joiner()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: join as a sandbox start does, report how long it took
        os.close(r)
        started = time.perf_counter()
        if way == "joiner":
            join()
        else:
            for f in procs:
                with open(f, "w") as fh:
                    fh.write(str(os.getpid()))
        os.write(w, str((time.perf_counter() - started) * 1000).encode())
        os._exit(0)
    os.close(w)
    took = float(os.read(r, 64))
    os.close(r)
    os.waitpid(pid, 0)
    cg.kill()
    cg.remove()
    return took, cg.version


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    found: dict[tuple[str, int], list[float]] = {(w, g): [] for w in WAYS for g in GAPS_MS}
    version = 0
    for i in range(rounds):
        for gap in GAPS_MS[i % len(GAPS_MS):] + GAPS_MS[:i % len(GAPS_MS)]:
            for way in WAYS if i % 2 else WAYS[::-1]:
                time.sleep(gap / 1000)
                took, version = join_ms(way)
                found[(way, gap)].append(took)
    print(f"joining a fresh run cgroup (v{version}) after a quiet gap; {rounds} rounds, "
          f"load {os.getloadavg()[0]:.2f}; min / median / max")
    for (way, gap), xs in found.items():
        print(f"  {way:<6} gap {gap:4d} ms: {min(xs):6.2f} / {statistics.median(xs):6.2f} / {max(xs):6.2f} ms")


if __name__ == "__main__":
    main()
