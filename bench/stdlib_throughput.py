"""In-process stdlib throughput: calls per second through the registry.

Usage: .venv/bin/python bench/stdlib_throughput.py [N]   (default N = 100000)

Calls ``PURE[name](value)`` — what the engine does for an inline stage, minus
the engine — over N distinct inputs, median of 5 runs. Target for
text_upper: >= 50,000 calls/s.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from noether_nix.stdlib.registry import PURE

TARGET_TEXT_UPPER = 50_000


def rate(fn: Callable[[Any], Any], inputs: list[Any], runs: int = 5) -> float:
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        for value in inputs:
            fn(value)
        timings.append(time.perf_counter() - start)
    return len(inputs) / statistics.median(timings)


def main(argv: list[str]) -> int:
    n = int(argv[0]) if argv else 100_000
    words = [f"item {i} with some words" for i in range(n)]
    cases: list[tuple[str, list[Any]]] = [
        ("text_upper", words),
        ("text_length", words),
        ("to_number", [str(i * 0.5) for i in range(n)]),
        ("text_split", [{"text": w, "delimiter": " "} for w in words]),
        ("json_path", [{"data": {"a": {"b": [i, i + 1]}}, "path": "$.a.b[1]"} for i in range(n)]),
        ("regex_match", [{"text": w, "pattern": r"(\d+)"} for w in words]),
        ("num_sum", [[float(i), 1.0, 2.0] for i in range(n)]),
    ]
    print(f"{'stage':<14} {'calls/s':>12}   ({n:,} distinct inputs, median of 5)")
    ok = True
    for name, inputs in cases:
        r = rate(PURE[name], inputs)
        print(f"{name:<14} {r:>12,.0f}")
        if name == "text_upper" and r < TARGET_TEXT_UPPER:
            ok = False
            print(f"text_upper below the {TARGET_TEXT_UPPER:,}/s target", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
