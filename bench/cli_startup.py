"""How long a `noether` process takes, against a bare interpreter.

Usage: .venv/bin/python bench/cli_startup.py [ROUNDS]   (default 20)

Interleaved, every round: `python3 -c pass` (the interpreter this venv is
built on, and the venv's own), `noether version`, `noether --help`, and,
against a daemon this script starts (throwaway home, its own socket), the
client commands `noether run G --socket S` (G: one Pure stdlib stage, so
the daemon's side is small) and `noether runs --socket S`; then the same
run embedded (`--local`) for scale. Prints min / median / max and each
median's ratio to the faster bare interpreter. Also checks, once, which
modules a client process loaded (no trio, engine, sandbox, store).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _timing import fmt, interleave, load, spawn_ms, stats

ROOT = Path(__file__).resolve().parents[1]
NOETHER = str(Path(sys.executable).parent / "noether")
TARGET = 3.0  # issue 16: `noether version` within 3x a bare `python3 -c pass`


def main(argv: list[str]) -> int:
    rounds = int(argv[0]) if argv else 20
    tmp = Path(tempfile.mkdtemp(prefix="noether-cli-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOETHER_")}
    env.update({"NOETHER_HOME": str(tmp / "home"), "XDG_RUNTIME_DIR": str(tmp)})
    sock = tmp / "noether.sock"
    graph = tmp / "g.json"
    graph.write_text(json.dumps({"description": "d", "version": "1", "root": {"op": "Stage", "id": "text_upper"}}))
    daemon = subprocess.Popen([NOETHER, "daemon", "--socket", str(sock)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the daemon did not start")
            time.sleep(0.05)
        base = getattr(sys, "_base_executable", sys.executable)
        cases = {
            "python3 -c pass (base interpreter)": lambda: spawn_ms([base, "-c", "pass"], env=env)[0],
            "python -c pass (the venv's)": lambda: spawn_ms([sys.executable, "-c", "pass"], env=env)[0],
            "noether version": lambda: spawn_ms([NOETHER, "version"], env=env)[0],
            "noether --help": lambda: spawn_ms([NOETHER, "--help"], env=env)[0],
            "noether run G --socket S (Pure stage)": lambda: spawn_ms(
                [NOETHER, "run", "--socket", str(sock), "--json", "--input", '"x"', str(graph)], env=env)[0],
            "noether runs --socket S": lambda: spawn_ms([NOETHER, "runs", "--socket", str(sock), "--limit", "1"],
                                                       env=env)[0],
            "noether run G --local (Pure stage, embedded)": lambda: spawn_ms(
                [NOETHER, "run", "--local", "--json", "--input", '"x"', str(graph)], env=env)[0],
        }
        samples = interleave(cases, rounds, say=lambda s: print(s, file=sys.stderr, flush=True))
        probe = ("import json, sys\nfrom noether_nix.cli.main import main\nmain(sys.argv[1:])\n"
                 "print(json.dumps(sorted(sys.modules)), file=sys.stderr)")
        loaded = json.loads(subprocess.run(
            [sys.executable, "-c", probe, "run", "--socket", str(sock), "--json", "--input", '"x"', str(graph)],
            env=env, capture_output=True, text=True, timeout=60).stderr.strip().splitlines()[-1])
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(30)
    baseline = min(stats(samples[k])[1] for k in list(cases)[:2])
    print(f"\nnoether start-up, {rounds} interleaved rounds; {load()}")
    print(f"{'command':<48} {'median (min–max)':>30} {'× bare':>8}")
    for name, values in samples.items():
        print(f"{name:<48} {fmt(values):>30} {stats(values)[1] / baseline:>7.2f}×")
    heavy = [m for m in loaded if m.split(".")[0] == "trio" or m.startswith(
        ("noether_nix.engine.engine", "noether_nix.sandbox", "noether_nix.nix", "noether_nix.store"))]
    print(f"\na client of a live daemon loaded {len(loaded)} modules; engine, sandbox, Nix, store or trio among "
          f"them: {heavy or 'none'}")
    ratio = stats(samples["noether version"])[1] / baseline
    print(f"`noether version` = {ratio:.2f}× the faster bare interpreter (target ≤ {TARGET:g}×): "
          f"{'holds' if ratio <= TARGET else 'does not hold'}")
    return 0 if ratio <= TARGET and not heavy else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main(sys.argv[1:]))
