"""Shared by the benchmarks: time processes cheaply, interleave cases, summarise.

The machine is shared and noisy, so every script interleaves its cases
round by round (each round runs every case once, starting from a different
one) and reports min / median / max per case and ratios of medians.
Processes are started with ``posix_spawn`` (vfork: the cost of starting one
does not grow with this script's size).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

#: The CPU time (user + system) of the process ``spawn_ms`` ran last, in ms.
last_cpu_ms: float | None = None


def spawn_ms(argv: list[str], *, env: dict[str, str] | None = None, stdin: bytes | None = None,
             capture: bool = False, check: bool = True) -> tuple[float, bytes]:
    """Run ``argv`` to its end: the wall time from spawn to reaped, in ms, and its stdout when ``capture``."""
    out_r = out_w = in_r = in_w = None
    actions: list[tuple[int, ...]] = []
    null = os.open(os.devnull, os.O_RDWR)
    try:
        if stdin is not None:
            in_r, in_w = os.pipe()
            actions.append((os.POSIX_SPAWN_DUP2, in_r, 0))
        else:
            actions.append((os.POSIX_SPAWN_DUP2, null, 0))
        if capture:
            out_r, out_w = os.pipe()
            actions.append((os.POSIX_SPAWN_DUP2, out_w, 1))
        else:
            actions.append((os.POSIX_SPAWN_DUP2, null, 1))
        actions.append((os.POSIX_SPAWN_DUP2, null, 2))
        started = time.perf_counter()
        pid = os.posix_spawn(argv[0], argv, env if env is not None else dict(os.environ), file_actions=actions)
        for fd in (in_r, out_w):
            if fd is not None:
                os.close(fd)
        in_r = out_w = None
        if in_w is not None and stdin is not None:
            os.write(in_w, stdin)
            os.close(in_w)
            in_w = None
        chunks = []
        if out_r is not None:
            while chunk := os.read(out_r, 1 << 16):
                chunks.append(chunk)
        _, status, usage = os.wait4(pid, 0)
        took = (time.perf_counter() - started) * 1000
        global last_cpu_ms
        # CPU time of the process and every descendant it waited for (bwrap reaps its sandbox).
        last_cpu_ms = (usage.ru_utime + usage.ru_stime) * 1000
    finally:
        for fd in (null, in_r, in_w, out_r, out_w):
            if fd is not None:
                os.close(fd)
    if check and os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv[:3]} exited with {os.waitstatus_to_exitcode(status)}")
    return took, b"".join(chunks)


def interleave(cases: dict[str, Callable[[], float]], rounds: int, *, warmup: int = 1,
               say: Callable[[str], None] | None = None,
               cpu: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Each case once per round (a rotating first case), after ``warmup`` untimed rounds;
    ``cpu`` collects the CPU time of the cases that ran one process (``spawn_ms``)."""
    global last_cpu_ms
    names = list(cases)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            last_cpu_ms = None
            took = cases[name]()
            if r >= warmup:
                samples[name].append(took)
                if cpu is not None and last_cpu_ms is not None:
                    cpu.setdefault(name, []).append(last_cpu_ms)
        if say:
            say(f"  round {r + 1}/{warmup + rounds}")
    return samples


def stats(values: list[float]) -> tuple[float, float, float]:
    return min(values), statistics.median(values), max(values)


def fmt(values: list[float], unit: str = "ms") -> str:
    lo, med, hi = stats(values)
    return f"{med:,.1f} {unit} ({lo:,.1f}–{hi:,.1f})"


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} on {os.cpu_count()} cores"
