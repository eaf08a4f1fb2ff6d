"""Issue 16's table, side by side: noether-nix against the cold-sandbox floor and its peers.

Usage: .venv/bin/python bench/peer.py [--rounds N] [--slow-rounds M] [--snakemake] [--json FILE]
       [--only CASE,CASE]  (only these fast cases, the floor always among them; no slow or map rows)

Everything runs in a throwaway NOETHER_HOME with its own daemon (its own
socket), on one trivial Python stage (``def execute(input): return input``),
its program built before anything is timed. Cases are interleaved round by
round (every case once per round, a rotating first case) because the
machine is shared and noisy; each row reports min / median / max and the
ratio of medians the issue's target is stated in.

* **floor**: the exact bwrap argv noether-nix plans for the stage
  (``prepare_launch``: same binds by fd, same seccomp filter, same
  ``--args`` environment, same Nix-built program), started with
  ``posix_spawn`` and no supervisor (no cgroup join, rlimits or Landlock;
  as root, ``setpriv`` switches to the planned sandbox user first).
* **daemon, one raw request**: ``POST /v1/runs`` from this process
  (``noether_nix.client``), the stage in a warm sandbox after the first.
* **daemon, whole process**: ``noether run G --socket S``.
* **embedded**: ``noether run G --local --no-cache``, whole process.
* **noether version** against ``python3 -c pass``.
* **Parallel of 200** trivial stages at concurrency 2 (engine
  ``run_concurrency`` and ``process_concurrency`` 2), embedded (whole
  process) and through the daemon (one raw request): per stage = wall × 2 /
  200, against the floor. With ``--snakemake``: Snakemake (installed into
  its own venv on first use) running the same program, unsandboxed, as 200
  jobs with ``--cores 2``. With ``NOETHER_UPSTREAM_BIN``: that binary's
  ``run`` of the same graph.
* **map(text_upper) over 100,000 texts** (``w0`` … ``w99999``), engine only,
  in a fresh process per round: calls/s of the map's own loop (its summary
  entry's duration) and of the whole ``engine.run``; peak RSS of that
  process; and, from one ``noether run --local --json`` of the same graph,
  the size of stdout (and of the output value within it) and of the stored
  run (trace and events, compressed, as the history counts it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import fmt, interleave, load, spawn_ms, stats

ROOT = Path(__file__).resolve().parents[1]
NOETHER = str(Path(sys.executable).parent / "noether")
STAGE = {"name": "trivial", "description": "returns its input", "input": "Any", "output": "Any",
         "effects": ["Pure"], "implementation": "def execute(input):\n    return input\n"}
MAP_N = 100_000
TARGETS = {
    "daemon_raw": ("≤ 0.3× floor, sandboxed", 0.3),
    "daemon_cli": ("≤ 3× floor", 3.0),
    "embedded": ("≤ 5× floor", 5.0),
    "version": ("≤ 3× bare python3 -c pass", 3.0),
    "parallel": ("≤ 1.1× floor", 1.1),
}

MAP_DRIVER = r"""
import json, os, resource, sys, time
import trio
from noether_nix.engine.engine import Engine, RunOptions
n = int(sys.argv[1])
engine = Engine()
graph = {"description": "map", "version": "1", "root": {"op": "Stage", "id": "map"}}
items = [f"w{i}" for i in range(n)]
async def once():
    started = time.perf_counter()
    res = await engine.run(graph, {"items": items, "stage_id": "text_upper"}, RunOptions())
    took = time.perf_counter() - started
    assert res.status == "ok" and res.output[-1] == items[-1].upper(), res.error
    inner = [e for e in res.trace["stages"] if "summary" in e][0]
    return took, inner["duration_ms"] / 1000
trio.run(once)  # the first run pays for facts and caches once per process
took, inner = trio.run(once)
print(json.dumps({"run_s": took, "inner_s": inner,
                  "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Bench:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.home = tmp / "home"
        self.sock = tmp / "noether.sock"
        config = tmp / "settings.json"
        config.write_text(json.dumps({"engine": {"run_concurrency": 2, "process_concurrency": 2}}))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("NOETHER_")}
        self.env.update({"NOETHER_HOME": str(self.home), "XDG_RUNTIME_DIR": str(tmp), "NOETHER_CONFIG": str(config)})
        os.environ.update({"NOETHER_HOME": str(self.home), "NOETHER_CONFIG": str(config)})
        spec = tmp / "trivial.json"
        spec.write_text(json.dumps(STAGE))
        subprocess.run([NOETHER, "stage", "add", "--local", str(spec)], env=self.env, check=True,
                       stdout=subprocess.DEVNULL)
        self.graph = self.write("g.json", {"op": "Stage", "id": "trivial"})
        self.g200 = self.write("g200.json", {"op": "Parallel", "branches": {
            f"b{i:03d}": {"op": "Stage", "id": "trivial"} for i in range(200)}})
        self.gmap = self.write("gmap.json", {"op": "Stage", "id": "map"})
        self.daemon: subprocess.Popen[bytes] | None = None
        self._floor_setup()

    def write(self, name: str, root: dict[str, Any]) -> Path:
        path = self.tmp / name
        path.write_text(json.dumps({"description": name, "version": "1", "root": root}))
        return path

    # ------------------------------------------------------------ the floor

    def _floor_setup(self) -> None:
        from noether_nix.engine.engine import Engine, RunOptions
        from noether_nix.nix.programs import build_stage_program
        from noether_nix.sandbox.policy import policy_from_effects
        from noether_nix.sandbox.profile import load_profile

        engine = Engine()
        stage = next(s for s in engine.store.all() if s.name == "trivial")
        assert stage.implementation_code is not None and stage.implementation_language is not None
        self.program = build_stage_program(stage.id, stage.implementation_language, stage.implementation_code,
                                           registry=engine.programs)
        self.profile = load_profile(engine.config.sandbox_profile)
        self.policy = policy_from_effects(stage.effects, profile=self.profile, store_paths=self.program.closure)
        self.limits = engine.limits_for(RunOptions())

    def floor(self) -> float:
        from noether_nix.sandbox.launch import Isolation, prepare_launch

        launch = prepare_launch(self.program.argv, policy=self.policy, limits=self.limits,
                                isolation=Isolation("bwrap"), profile=self.profile, env=None, run_as=None)
        try:
            for fd in launch.fds:
                os.set_inheritable(fd, True)
            argv = list(launch.argv)
            if launch.run_as is not None:  # root plans a sandbox user: become it, nothing else
                argv = ["/usr/bin/setpriv", f"--reuid={launch.run_as.uid}", f"--regid={launch.run_as.gid}",
                        "--clear-groups", "--", *argv]
            took, out = spawn_ms(argv, env=launch.env, stdin=b'"x"', capture=True)
            assert out.strip() == b'"x"', out
            return took
        finally:
            launch.close_fds()
            launch.finish()

    # ------------------------------------------------------------ the daemon

    def start_daemon(self) -> None:
        config = self.env["NOETHER_CONFIG"]
        self.daemon = subprocess.Popen([NOETHER, "daemon", "--socket", str(self.sock), "--config", config],
                                       env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       start_new_session=True)
        deadline = time.monotonic() + 60
        while not self.sock.exists():
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the daemon did not start")
            time.sleep(0.05)
        # Its start-up warmup builds every Active stage's program in the background (seconds):
        # the rows time a daemon at rest, not one still building.
        deadline = time.monotonic() + 300
        while self.health().get("warmup", {}).get("state") == "running" and time.monotonic() < deadline:
            time.sleep(0.1)

    def stop_daemon(self) -> None:
        if self.daemon is not None:
            os.killpg(self.daemon.pid, signal.SIGTERM)
            self.daemon.wait(60)

    def raw(self, graph: Path) -> float:
        from noether_nix.client import Client

        doc = json.loads(graph.read_text())
        started = time.perf_counter()
        events = list(Client(str(self.sock)).run(doc, "x", {"cache": False}))
        took = (time.perf_counter() - started) * 1000
        assert events[-1]["status"] == "ok", events[-1]
        return took

    def cli(self, *args: str) -> float:
        return spawn_ms([NOETHER, "run", *args], env=self.env)[0]

    def health(self) -> dict[str, Any]:
        from noether_nix.client import Client

        return Client(str(self.sock)).call("GET", "/v1/health")  # type: ignore[no-any-return]

    # ------------------------------------------------------------ peers

    def snakemake(self) -> Any:
        venv = Path.home() / ".cache" / "noether-bench" / "snakemake-venv"
        exe = venv / "bin" / "snakemake"
        if not exe.exists():
            say("installing Snakemake into " + str(venv))
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "snakemake"], check=True)
        work = self.tmp / "snakemake"
        work.mkdir(exist_ok=True)
        (work / "Snakefile").write_text(
            "rule all:\n    input: expand('out/{i}.json', i=range(200))\n\n"
            f"rule stage:\n    output: 'out/{{i}}.json'\n    shell: \"echo '\\\"x\\\"' | {self.program.argv[0]} > {{output}}\"\n")

        def once() -> float:
            shutil.rmtree(work / "out", ignore_errors=True)
            shutil.rmtree(work / ".snakemake", ignore_errors=True)
            return spawn_ms([str(exe), "--cores", "2", "--quiet", "-s", str(work / "Snakefile"), "-d", str(work)],
                            env={**self.env, "PATH": f"{venv / 'bin'}:/usr/bin:/bin"})[0]

        return once

    def upstream(self, binary: str) -> Any:
        spec = self.tmp / "trivial.json"
        subprocess.run([binary, "stage", "add", str(spec)], capture_output=True, timeout=300)
        return lambda: spawn_ms([binary, "run", str(self.graph), "--input", '"x"'], env=self.env)[0]

    # ------------------------------------------------------------ map

    def map_once(self) -> dict[str, float]:
        _, out = spawn_ms([sys.executable, "-P", "-c", MAP_DRIVER, str(MAP_N)], env=self.env, capture=True)
        return json.loads(out)  # type: ignore[no-any-return]

    def map_sizes(self) -> dict[str, int]:
        items = json.dumps({"items": [f"w{i}" for i in range(MAP_N)], "stage_id": "text_upper"})
        _, out = spawn_ms([NOETHER, "run", "--local", "--json", str(self.gmap)], env=self.env, capture=True,
                          stdin=items.encode())  # the input on stdin: too long for an argument
        doc = json.loads(out)
        value = len(json.dumps(doc["data"]["output"], ensure_ascii=False, separators=(",", ":")).encode())
        from noether_nix.store.db import connect

        conn = connect(self.home / "noether.db")
        (stored,) = conn.execute("SELECT stored_bytes FROM runs WHERE run_id = ?", (doc["data"]["run_id"],)).fetchone()
        trace = len(json.dumps(doc["data"]["trace"]).encode())
        return {"stdout": len(out), "output_value": value, "trace_in_stdout": trace, "stored": stored}


def ratio_line(name: str, got: float, key: str) -> str:
    text, bound = TARGETS[key]
    return f"{name}: {got:.2f}× (target {text}): {'holds' if got <= bound else 'does not hold'}"


def only_rows(samples: dict[str, list[float]], rounds: int, load_after: str, tmp: Path) -> int:
    floor = stats(samples["floor"])[1]
    print(f"\n{rounds} interleaved rounds; {load_after} after")
    for key, values in samples.items():
        print(f"{key:<20} {fmt(values):>30} {stats(values)[1] / floor:>9.2f}× floor")
    if "daemon_raw" in samples:
        print(ratio_line("daemon, one raw request", stats(samples["daemon_raw"])[1] / floor, "daemon_raw"))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--slow-rounds", type=int, default=3)
    ap.add_argument("--snakemake", action="store_true", help="install Snakemake into its own venv and compare")
    ap.add_argument("--json", help="write every sample here")
    ap.add_argument("--only", help="run only these fast cases (comma-separated, e.g. daemon_raw; the floor is "
                                   "always run, interleaved with them) and print their rows")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="noether-peer-bench-"))
    os.chmod(tmp, 0o755)  # sandbox users must reach the store paths only; nothing here is bound
    say(f"bench home {tmp}; {load()}")
    bench = Bench(tmp)
    bench.start_daemon()
    base = getattr(sys, "_base_executable", sys.executable)
    results: dict[str, Any] = {"load_before": load()}
    try:
        fast = {
            "floor": bench.floor,
            "daemon_raw": lambda: bench.raw(bench.graph),
            "daemon_cli": lambda: bench.cli("--socket", str(bench.sock), "--json", "--no-cache", "--input", '"x"',
                                            str(bench.graph)),
            "embedded": lambda: bench.cli("--local", "--json", "--no-cache", "--input", '"x"', str(bench.graph)),
            "version": lambda: spawn_ms([NOETHER, "version"], env=bench.env)[0],
            "python_pass": lambda: spawn_ms([base, "-c", "pass"], env=bench.env)[0],
            "venv_python_pass": lambda: spawn_ms([sys.executable, "-c", "pass"], env=bench.env)[0],
        }
        cpu: dict[str, list[float]] = {}
        if args.only:
            wanted = {"floor", *args.only.split(",")}
            unknown = wanted - set(fast)
            if unknown:
                raise SystemExit(f"--only: no such case {sorted(unknown)}; cases: {', '.join(fast)}")
            samples = interleave({k: v for k, v in fast.items() if k in wanted}, args.rounds, say=say, cpu=cpu)
            return only_rows(samples, args.rounds, load(), tmp)
        say("fast rows")
        samples = interleave(fast, args.rounds, say=say, cpu=cpu)
        slow: dict[str, Any] = {
            "floor_slow": bench.floor,
            "parallel_embedded": lambda: bench.cli("--local", "--json", "--no-cache", "--input", '"x"',
                                                   str(bench.g200)),
            "parallel_daemon": lambda: bench.raw(bench.g200),
        }
        if args.snakemake:
            slow["snakemake"] = bench.snakemake()
        upstream = os.environ.get("NOETHER_UPSTREAM_BIN")
        if upstream:
            slow["upstream"] = bench.upstream(upstream)
            fast_up = {"upstream_one": lambda: spawn_ms([upstream, "run", str(bench.graph), "--input", '"x"'],
                                                        env=bench.env)[0], "embedded_again": fast["embedded"]}
            samples.update(interleave(fast_up, args.rounds, say=say))
        say("slow rows")
        samples.update(interleave(slow, args.slow_rounds, say=say))
        say("map rows")
        maps = [bench.map_once() for _ in range(args.slow_rounds)]
        sizes = bench.map_sizes()
        results["health_warm"] = bench.health().get("warm_sandboxes")
    finally:
        bench.stop_daemon()
    results.update({"samples": samples, "cpu": cpu, "map": maps, "map_sizes": sizes, "load_after": load()})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))

    floor = stats(samples["floor"])[1]
    bare = min(stats(samples["python_pass"])[1], stats(samples["venv_python_pass"])[1])
    print(f"\nissue 16 peer table: {args.rounds} interleaved rounds ({args.slow_rounds} for the slow rows); "
          f"{results['load_before']} before, {results['load_after']} after")
    print(f"{'measure':<58} {'median (min–max)':>30} {'ratio':>10} {'CPU ms (ratio)':>18}")
    cpu_bare = min(stats(cpu[k])[1] for k in ("python_pass", "venv_python_pass")) if "python_pass" in cpu else None

    def row(label: str, key: str, against: float, unit: str = "ms") -> float:
        got = stats(samples[key])[1] / against
        cpu_text = ""
        if key in cpu:  # the process's own CPU time: what the load on the machine inflates least
            if key in ("python_pass", "venv_python_pass", "version") and cpu_bare:
                cpu_text = f"{stats(cpu[key])[1]:.1f} ({stats(cpu[key])[1] / cpu_bare:.2f}×)"
            else:  # no ratio to the floor: its CPU time misses the sandboxed program (see the note)
                cpu_text = f"{stats(cpu[key])[1]:.1f}"
        print(f"{label:<58} {fmt(samples[key], unit):>30} {got:>9.2f}× {cpu_text:>18}")
        return got

    row("floor: planned bwrap argv + program, no supervisor", "floor", floor)
    r_raw = row("warm trivial stage through the daemon, one raw request", "daemon_raw", floor)
    r_cli = row("`noether run G --socket S`, whole process", "daemon_cli", floor)
    r_emb = row("embedded `noether run G --no-cache`, whole process", "embedded", floor)
    row("python3 -c pass (base interpreter)", "python_pass", bare)
    row("python -c pass (the venv's)", "venv_python_pass", bare)
    r_ver = row("`noether version` (vs the faster bare interpreter)", "version", bare)
    floor_slow = stats(samples["floor_slow"])[1]
    per_stage: dict[str, float] = {}
    for key, label in (("parallel_embedded", "Parallel of 200, embedded, whole process"),
                       ("parallel_daemon", "Parallel of 200, through the daemon, one raw request"),
                       ("snakemake", "Snakemake, the same program as 200 jobs, --cores 2"),
                       ("upstream", "upstream binary, Parallel… (NOETHER_UPSTREAM_BIN)")):
        if key in samples:
            per = stats(samples[key])[1] * 2 / 200
            per_stage[key] = per
            print(f"{label:<58} {fmt(samples[key]):>30} {per / floor_slow:>9.2f}× (per stage {per:.1f} ms)")
    if "snakemake" in per_stage:
        for key in ("parallel_embedded", "parallel_daemon"):
            print(f"  {key} / Snakemake: {per_stage[key] / per_stage['snakemake']:.2f}×")
    if "upstream_one" in samples:
        row("upstream binary, one stage (unsandboxed)", "upstream_one", floor)
        print(f"  embedded / upstream: {stats(samples['embedded_again'])[1] / stats(samples['upstream_one'])[1]:.2f}×")
    inner = [MAP_N / m["inner_s"] for m in maps]
    whole = [MAP_N / m["run_s"] for m in maps]
    rss = [m["maxrss_mib"] for m in maps]
    print(f"{'map(text_upper) × 100,000, the map loop':<58} {fmt(inner, 'calls/s'):>30}")
    print(f"{'map(text_upper) × 100,000, the whole engine.run':<58} {fmt(whole, 'calls/s'):>30}")
    print(f"{'  peak RSS of that process':<58} {fmt(rss, 'MiB'):>30}")
    print(f"  `noether run --json`: {sizes['stdout'] / 1e6:.2f} MB on stdout, of which the output value is "
          f"{sizes['output_value'] / 1e6:.2f} MB and the trace {sizes['trace_in_stdout'] / 1e3:.1f} kB; "
          f"stored run (trace + events, compressed) {sizes['stored'] / 1e6:.3f} MB")
    print("  CPU ms: user + system time of the process and the children it waited for; the floor's misses the "
          "sandboxed program (bwrap's init reaps it, not in a way rusage passes up), so it has no CPU ratio")
    print()
    print(ratio_line("daemon, one raw request", r_raw, "daemon_raw"))
    print(ratio_line("noether run --socket, whole process", r_cli, "daemon_cli"))
    print(ratio_line("embedded, whole process", r_emb, "embedded"))
    print(ratio_line("noether version", r_ver, "version"))
    for key in ("parallel_embedded", "parallel_daemon"):
        print(ratio_line(f"{key} per stage", per_stage[key] / floor_slow, "parallel"))
    best_inner, best_whole = stats(inner)[1], stats(whole)[1]
    print(f"map loop: {best_inner:,.0f} calls/s (target ≥ 3,500,000): {'holds' if best_inner >= 3.5e6 else 'does not hold'}")
    print(f"map whole run: {best_whole:,.0f} calls/s (target ≥ 3,500,000): "
          f"{'holds' if best_whole >= 3.5e6 else 'does not hold'}")
    print(f"map peak RSS: {stats(rss)[1]:.0f} MiB (target ≤ 100): {'holds' if stats(rss)[1] <= 100 else 'does not hold'}")
    print(f"map --json stdout: {sizes['stdout'] / 1e6:.2f} MB (target ≤ 1): "
          f"{'holds' if sizes['stdout'] <= 1e6 else 'does not hold'}")
    print(f"map stored run: {sizes['stored'] / 1e6:.3f} MB (target ≤ 1): "
          f"{'holds' if sizes['stored'] <= 1e6 else 'does not hold'}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
