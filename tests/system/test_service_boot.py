"""The service on a real systemd: Debian 12 booted in a container, installed
through the README's "Run it as a service" section, then used and abused
the way an operator and its users would.

Marked ``system`` (deselect with ``-m 'not system'``). Needs root,
debootstrap and systemd-container (``./dev setup`` installs them). The
tests share one booted container and run in file order.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.system.container import CACHE, ROOT, Container, rootfs, wait_until, wheelhouse

pytestmark = [pytest.mark.system,
              pytest.mark.skipif(os.geteuid() != 0, reason="boots a container: needs root")]

SOCK = "/run/noether/noether.sock"
CLI = "/opt/noether-nix/bin/noether"
SRC = "/root/noether-nix"  # the checkout, as an operator would have it
TIMES: dict[str, float] = {}

SLEEPER = {"name": "sleeper", "description": "sleeps, then answers (a run to interrupt)", "input": {"kind": "Any"},
           "output": "Text", "effects": ["Pure"], "language": "python",
           "implementation": "import time\ndef execute(input):\n    time.sleep(25)\n    return 'woke'\n",
           "examples": [], "tags": ["test"]}
FORKER = {"name": "forker", "description": "forks until the kernel refuses, answers how many it got",
          "input": {"kind": "Any"}, "output": "Number", "effects": ["Pure"], "language": "python",
          "implementation": ("import os, time\ndef execute(input):\n    n = 0\n    while n < 100000:\n"
                             "        try:\n            pid = os.fork()\n        except OSError:\n"
                             "            return n\n        if pid == 0:\n            time.sleep(60)\n"
                             "            os._exit(0)\n        n += 1\n    return n\n"),
          "examples": [], "tags": ["test"]}
BALLOON = {"name": "balloon", "description": "allocates until stopped", "input": {"kind": "Any"}, "output": "Text",
           "effects": ["Pure"], "language": "python",
           "implementation": ("def execute(input):\n    a = []\n    while True:\n"
                              "        a.append(bytearray(16 * 1024 * 1024))\n"),
           "examples": [], "tags": ["test"]}

def graph(stage: dict[str, Any]) -> dict[str, Any]:
    return {"description": stage["description"], "version": "0.1.0", "stages": [f"{stage['name']}.json"],
            "root": {"op": "Stage", "id": stage["name"]}}


def readme_service_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Run it as a service", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "the README's service section has no command block"
    return [ln for ln in block.group(1).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    for tool in ("debootstrap", "systemd-nspawn", "nsenter"):
        assert subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode == 0, \
            f"{tool} is missing: ./dev setup installs it"
    t = time.monotonic()
    fs = rootfs()
    TIMES["rootfs_s"] = time.monotonic() - t
    t = time.monotonic()
    wheels = wheelhouse()
    TIMES["wheels_s"] = time.monotonic() - t
    work = tmp_path_factory.mktemp("box")
    c = Container(fs, {str(ROOT): SRC, str(wheels): "/opt/wheels"}, work / "nspawn.log")
    try:
        TIMES["boot_s"] = c.start()
        yield c
    finally:
        c.stop()
        TIMES["total_s"] = time.monotonic() - t
        with open(CACHE / "last-system-test-times.json", "w") as f:
            json.dump(TIMES, f, indent=1)


def health(c: Container, user: str | None = None) -> dict[str, Any]:
    out = c.sh(f"curl -sf --unix-socket {SOCK} http://x/v1/health", user=user).stdout
    return json.loads(out)["data"]


def unit(c: Container, name: str, *props: str) -> dict[str, str]:
    out = c.sh(f"systemctl show {name} " + " ".join(f"-p {p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def noether_run(c: Container, path: str, *args: str, user: str | None = None,
                local: bool = False) -> tuple[int, dict[str, Any]]:
    """`noether run` through the socket (or embedded, in a scope of the container's
    systemd as a login session would be); (exit status, its one envelope on stdout)."""
    cmd = f"{CLI} run --json {shlex.join(args)} {path}"
    if local:
        cmd = f"systemd-run --quiet --scope {CLI} --local run --json {shlex.join(args)} {path}"
    proc = c.sh(f"cd $(dirname {path}) && {cmd}", user=user, check=False, env={"NOETHER_SOCKET": SOCK})
    try:
        return proc.returncode, json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"not an envelope (exit {proc.returncode}): {proc.stdout[-2000:]} "
                             f"{proc.stderr[-2000:]}") from None


def put(c: Container, path: str, doc: Any, owner: str | None = None) -> None:
    target = c.path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    if owner:
        c.sh(f"chown -R {owner} {shlex.quote(str(Path(path).parent))}")


def service_cgroup_pids(c: Container) -> list[int]:
    """Every process in noether.service's cgroup (systemd's own hierarchy), sandboxes included."""
    out = c.sh("for d in /sys/fs/cgroup/systemd/system.slice/noether.service "
               "/sys/fs/cgroup/unified/system.slice/noether.service /sys/fs/cgroup/system.slice/noether.service; "
               "do [ -d $d ] && find $d -name cgroup.procs -exec cat {} +; done; true").stdout
    return [int(x) for x in out.split()]


def run_cgroups(c: Container) -> list[str]:
    """The per-run cgroups the daemon made (v1 memory/pids, or v2 beside its leaf)."""
    out = c.sh("ls -d /sys/fs/cgroup/*/system.slice/noether.service/noether-* "
               "/sys/fs/cgroup/system.slice/noether.service/noether-* 2>/dev/null; true").stdout
    return out.split()


def start_sleeper(c: Container, n: int) -> tuple[subprocess.Popen[str], str]:
    """A run whose sandbox sleeps: (its client, its run id) once the sandbox is up."""
    client = subprocess.Popen(c.command(f"cd /root/t && {CLI} run --json --input '{{\"n\": {n}}}' sleeper-graph.json",
                                        env={"NOETHER_SOCKET": SOCK}),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    def running_runs() -> list[str]:
        runs = json.loads(c.sh(f"curl -sf --unix-socket {SOCK} 'http://x/v1/runs?limit=5'").stdout)["data"]["runs"]
        return [r["run_id"] for r in runs if r["status"] == "running"]

    # Its sandbox may be a warm one kept from an earlier run (its cgroup already there): the run must be going too.
    wait_until(lambda: (bool(run_cgroups(c)) and bool(running_runs())) or client.poll() is not None, 180,
               what="the sleeper's sandbox", interval=0.2)
    assert client.poll() is None, client.communicate()
    running = running_runs()
    assert len(running) == 1, running
    return client, running[0]


# ---------------------------------------------------------------------- install


def test_install_through_the_readme(box: Container) -> None:
    t = time.monotonic()
    for line in readme_service_commands():
        proc = box.sh(f"cd {SRC} && {line}", env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/opt/wheels",
                                                  "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
        if line.endswith("service install"):
            # Nothing to warn about on a stock Debian: the sandbox users exist and bwrap works as them.
            assert json.loads(proc.stdout)["data"]["warnings"] == [], proc.stdout
    TIMES["install_s"] = time.monotonic() - t
    config = json.loads(box.path("/etc/noether/daemon.json").read_text())
    assert config["allowed_groups"] == ["noether-users"] and "//grace_s" in config
    service = box.path("/etc/systemd/system/noether.service").read_text()
    assert f"ExecStart={CLI} daemon --config /etc/noether/daemon.json" in service
    assert "Environment=NIX_REMOTE=daemon" in service and "SupplementaryGroups=nix-users" in service
    assert unit(box, "noether.socket", "ActiveState")["ActiveState"] == "active"


def test_socket_activation_on_first_request(box: Container) -> None:
    assert unit(box, "noether.service", "ActiveState")["ActiveState"] == "inactive"
    h = health(box)
    assert h["status"] == "ok"
    state = unit(box, "noether.service", "ActiveState", "StatusText", "User")
    assert state["ActiveState"] == "active" and state["StatusText"] == "serving" and state["User"] == "noether"
    # Limits are real: the service's delegated cgroups carry per-run memory and pids caps.
    assert h["sandbox"]["limits"]["cgroup"] in ("v1", "v2")
    assert {"memory", "pids"} <= set(h["sandbox"]["limits"]["cgroup_controllers"]) or \
        h["sandbox"]["limits"]["cgroup_controllers"] == ["unified"]
    assert h["nix"]["ok"], h["nix"]


# ---------------------------------------------------------------------- runs


def test_examples_run_as_root(box: Container) -> None:
    # A local web server for the network example (the container has only loopback).
    put(box, "/srv/www/index.html", "  served locally \n")
    box.sh("systemd-run --unit=web python3 -m http.server 8000 --bind 127.0.0.1 --directory /srv/www")
    wait_until(lambda: box.sh("curl -sf http://127.0.0.1:8000/", check=False).returncode == 0, 30, what="the web server")
    ex = f"{SRC}/examples"
    t = time.monotonic()
    rc, out = noether_run(box, f"{ex}/hello.json")
    TIMES["first_run_s"] = time.monotonic() - t
    assert rc == 0 and out["data"]["output"] == "HELLO, WORLD!", out
    assert out["data"]["trace"]["stages"][0]["isolation"] == "bwrap"
    rc, out = noether_run(box, f"{ex}/network.json", "--input", json.dumps({"url": "http://127.0.0.1:8000/"}))
    assert rc == 0 and out["data"]["output"] == "served locally", out
    # What the daemon ran, it ran as its own user through nix-daemon: the store is root's.
    assert box.sh("stat -c %U /nix/store").stdout.strip() == "root"


def test_javascript_examples(box: Container) -> None:
    # Debian's node 18 reads builtins from /usr/share/nodejs at start: the imported runtime carries them.
    rc, out = noether_run(box, f"{SRC}/examples/budget.json", "--input", '"x"', "--budget-cents", "12")
    assert rc == 0 and out["data"]["spent_cents"] == 12, out
    rc, out = noether_run(box, f"{SRC}/examples/operators.json")
    assert rc == 0 and out["data"]["output"]["loud"] == "HELLO, WORLD!", out


def test_sandboxes_started_by_root_run_as_the_sandbox_users_install_created(box: Container) -> None:
    # `noether run --local` as root (examples/files.json, prepared as its description says): the
    # sandbox is a dedicated noether-sbx-N user, never root, so what it writes is that user's.
    locks = box.path("/run/noether-sandbox-uids").stat()
    assert (locks.st_uid, locks.st_mode & 0o7777) == (0, 0o700)  # the tmpfiles snippet's, root's alone
    box.sh("mkdir -p /var/tmp/noether-example/out && echo hello > /var/tmp/noether-example/in.txt && "
           "chgrp noether-sbx /var/tmp/noether-example/out && chmod g+rwx /var/tmp/noether-example/out")
    rc, out = noether_run(box, f"{SRC}/examples/files.json", local=True)
    assert rc == 0 and out["data"]["output"] == 5, out
    owner = box.sh("stat -c '%U %G' /var/tmp/noether-example/out/result.txt").stdout.split()
    assert re.fullmatch(r"noether-sbx-\d+", owner[0]) and owner[1] == "noether-sbx", owner
    assert box.path("/var/tmp/noether-example/out/result.txt").read_text() == "HELLO"


def test_examples_run_as_a_member_of_the_allowed_group(box: Container) -> None:
    box.sh("useradd -m -G noether-users alice && useradd -m mallory")
    for user in ("alice", "mallory"):
        box.sh(f"cp -r {SRC}/examples /home/{user}/ && chown -R {user} /home/{user}/examples")
    for name, args, want in (("hello.json", (), "HELLO, WORLD!"),
                             ("network.json", ("--input", json.dumps({"url": "http://127.0.0.1:8000/"})),
                              "served locally")):
        rc, out = noether_run(box, f"/home/alice/examples/{name}", *args, user="alice")
        assert rc == 0 and out["data"]["output"] == want, out
    assert health(box, user="alice")["status"] == "ok"
    # Not in the group: the socket is closed to mallory (and --socket makes that an error, not a fallback).
    proc = box.sh(f"{CLI} --socket {SOCK} run /home/mallory/examples/hello.json", user="mallory", check=False)
    assert proc.returncode != 0 and json.loads(proc.stdout)["error"]["code"] == "daemon_unreachable", proc.stdout


def test_stage_limits_stop_a_fork_bomb_and_a_memory_balloon(box: Container) -> None:
    for stage in (FORKER, BALLOON, SLEEPER):
        put(box, f"/root/t/{stage['name']}.json", stage)
        put(box, f"/root/t/{stage['name']}-graph.json", graph(stage))
    rc, out = noether_run(box, "/root/t/forker-graph.json", "--timeout-secs", "20")
    assert rc == 0, out
    assert 16 <= out["data"]["output"] < 128, out  # pids.max (128 with the stage's own process) stopped it
    rc, out = noether_run(box, "/root/t/balloon-graph.json", "--timeout-secs", "20")
    assert rc != 0 and out["error"]["code"] == "stage_memory_limit", out
    # Each run's own cgroups are gone with it; what is left are the warm sandboxes the daemon keeps
    # for the next call (each shown in its health, with its cgroup), not a run's.
    warm = health(box)["warm_sandboxes"]
    kept = {s["cgroup"] for s in warm["idle"] + warm["busy"]}
    assert {p.rsplit("/", 1)[1] for p in run_cgroups(box)} <= kept, (run_cgroups(box), warm)


# ---------------------------------------------------------------------- lifecycle


def test_stop_with_a_run_in_flight(box: Container) -> None:
    # The operator shortens the grace period (daemon.json), as the documented key says.
    cfg = box.path("/etc/noether/daemon.json")
    doc = json.loads(cfg.read_text())
    doc["grace_s"] = 3.0
    cfg.write_text(json.dumps(doc, indent=2))
    box.sh("systemctl stop noether.service")
    client, run_id = start_sleeper(box, 1)
    t = time.monotonic()
    box.sh("systemctl stop noether.service", timeout=120)
    took = time.monotonic() - t
    TIMES["stop_s"] = took
    assert took < 3.0 + 10, took  # the grace period, not TimeoutStopSec's 45 s
    out, err = client.communicate(timeout=30)
    assert client.returncode != 0
    assert unit(box, "noether.service", "ActiveState")["ActiveState"] in ("inactive", "failed")
    assert service_cgroup_pids(box) == [] and run_cgroups(box) == []  # no sandbox survived
    run = json.loads(box.sh(f"curl -sf --unix-socket {SOCK} http://x/v1/runs/{run_id}").stdout)["data"]
    assert run["status"] == "cancelled", run


def test_kill_and_restart_marks_the_run_interrupted(box: Container) -> None:
    before = json.loads(box.sh(f"curl -sf --unix-socket {SOCK} http://x/v1/store/stats").stdout)["data"]
    client, run_id = start_sleeper(box, 2)
    box.sh("systemctl kill -s KILL noether.service")
    client.communicate(timeout=60)
    wait_until(lambda: service_cgroup_pids(box) == [] or
               unit(box, "noether.service", "ActiveState")["ActiveState"] == "active", 30, what="the kill")
    run = json.loads(box.sh(f"curl -sf --unix-socket {SOCK} http://x/v1/runs/{run_id}").stdout)["data"]
    assert run["status"] == "interrupted", run
    assert unit(box, "noether.service", "ActiveState")["ActiveState"] == "active"
    after = json.loads(box.sh(f"curl -sf --unix-socket {SOCK} http://x/v1/store/stats").stdout)["data"]
    assert after == before
    verify = json.loads(box.sh(f"curl -sf --unix-socket {SOCK} http://x/v1/verify").stdout)["data"]
    assert verify["failed"] == 0 and verify["total"] > 85
    ok = box.sh("python3 -c \"import sqlite3; print(sqlite3.connect('/var/lib/noether/noether.db')"
                ".execute('pragma integrity_check').fetchone()[0])\"").stdout.strip()
    assert ok == "ok"
    rc, out = noether_run(box, f"{SRC}/examples/hello.json")
    assert rc == 0 and out["data"]["output"] == "HELLO, WORLD!"


def test_a_wedged_event_loop_is_restarted_by_the_watchdog(box: Container) -> None:
    put(box, "/etc/systemd/system/noether.service.d/watchdog.conf", "[Service]\nWatchdogSec=3\n")
    box.sh("systemctl daemon-reload && systemctl restart noether.service")
    health(box)
    before = unit(box, "noether.service", "MainPID", "NRestarts")
    box.sh(f"kill -STOP {before['MainPID']}")  # the event loop stops: no more WATCHDOG=1
    t = time.monotonic()

    def restarted() -> bool:
        now = unit(box, "noether.service", "MainPID", "NRestarts", "ActiveState")
        return now["ActiveState"] == "active" and now["MainPID"] not in ("0", before["MainPID"])

    wait_until(restarted, 60, what="the watchdog restart", interval=0.3)
    TIMES["watchdog_restart_s"] = time.monotonic() - t
    assert int(unit(box, "noether.service", "NRestarts")["NRestarts"]) == int(before["NRestarts"]) + 1
    assert "Watchdog timeout" in box.sh("journalctl -u noether.service --no-pager -q").stdout
    assert health(box)["status"] == "ok"
    box.sh("rm /etc/systemd/system/noether.service.d/watchdog.conf && systemctl daemon-reload")


def test_the_timer_runs_a_graph(box: Container) -> None:
    box.sh(f"cp {SRC}/examples/hello.json /etc/noether/graphs/nightly.json && "
           f"cp -r {SRC}/examples/stages /etc/noether/graphs/")
    put(box, "/etc/systemd/system/noether-run@nightly.timer.d/soon.conf", "[Timer]\nOnActiveSec=1\nRandomizedDelaySec=0\n")
    box.sh("systemctl daemon-reload && systemctl start noether-run@nightly.timer")
    wait_until(lambda: unit(box, "noether-run@nightly.service", "ExecMainExitTimestampMonotonic")
               ["ExecMainExitTimestampMonotonic"] not in ("", "0"), 90, what="the timer's run", interval=0.3)
    state = unit(box, "noether-run@nightly.service", "Result", "ExecMainStatus")
    log = box.sh("journalctl -u noether-run@nightly.service --no-pager -q -o cat").stdout
    assert state == {"Result": "success", "ExecMainStatus": "0"}, log[-3000:]
    assert '"output":"HELLO, WORLD!"' in log  # the envelope: one compact journal line (stdout is not a terminal)
    # Done with it: a timer with OnActiveSec= and OnCalendar= fires again after every daemon-reload
    # (systemd#31945), and its run would socket-activate the daemon under the later tests.
    box.sh("systemctl stop noether-run@nightly.timer && rm -r /etc/systemd/system/noether-run@nightly.timer.d && "
           "systemctl daemon-reload")


# ---------------------------------------------------------------------- refusals


def test_the_daemon_refuses_to_start_without_a_usable_store_or_limits(box: Container) -> None:
    dropin = "/etc/systemd/system/noether.service.d/broken.conf"
    for setting, said in (("SupplementaryGroups=", "nix-daemon cannot be reached"),
                          ("ExecStartPre=", "no writable cgroup for per-run memory and process limits"),
                          ("ProtectHostname=yes", "cannot build a sandbox: bwrap: Can't set hostname")):
        put(box, dropin, f"[Service]\n{setting}\n")
        box.sh("systemctl daemon-reload && systemctl reset-failed noether.service; "
               "systemctl stop noether.service; systemctl restart noether.service", check=False)
        wait_until(lambda: unit(box, "noether.service", "ActiveState")["ActiveState"] in ("failed", "inactive"),
                   30, what="the refusal")
        time.sleep(1)  # a restart loop would show in NRestarts
        state = unit(box, "noether.service", "ExecMainStatus", "NRestarts", "Result", "ActiveState")
        assert state["ExecMainStatus"] == "78" and state["NRestarts"] == "0", \
            (state, box.sh("journalctl -u noether.service --no-pager -q -n 15 -o cat").stdout)
        assert said in box.sh("journalctl -u noether.service --no-pager -q -n 30").stdout
    box.sh(f"rm {dropin} && systemctl daemon-reload && systemctl reset-failed noether.service noether.socket; "
           "systemctl restart noether.socket")
    assert health(box)["status"] == "ok"


def test_uninstall_removes_what_install_added_and_nothing_else(box: Container) -> None:
    out = json.loads(box.sh(f"{CLI} service uninstall").stdout)["data"]
    assert "/etc/systemd/system/noether.service" in out["removed"]
    assert any("daemon.json (changed since install)" in k for k in out["kept"])  # the operator edited it
    for gone in ("/etc/systemd/system/noether.service", "/etc/systemd/system/noether.socket",
                 "/etc/systemd/system/noether-run@.timer", "/etc/sysusers.d/noether.conf",
                 "/etc/tmpfiles.d/noether.conf", "/etc/noether/install-manifest.json",
                 "/etc/systemd/system/sockets.target.wants/noether.socket"):
        assert not box.path(gone).exists() and not box.path(gone).is_symlink(), gone
    assert box.path("/var/lib/noether/noether.db").exists()  # the store stays
    assert box.path("/etc/noether/daemon.json").exists()
    assert box.sh("systemctl is-active noether.socket", check=False).stdout.strip() != "active"
    assert "noether-sbx-0" in " ".join(out["kept"])  # the accounts stay, by design
    for account in ("noether", "noether-sbx-0", "noether-sbx-63"):
        assert box.sh(f"id -u {account}").returncode == 0
