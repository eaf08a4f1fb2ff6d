"""A Debian 12 container booted with systemd as PID 1, for the service tests.

The root file system comes from ``debootstrap`` and is cached under
``/var/cache/noether-test`` (``$NOETHER_TEST_CACHE``), keyed by the package
list: a fresh machine builds it once (about a minute), later runs reuse it.
``systemd-nspawn --volatile=overlay`` boots it with a throw-away upper layer,
so nothing a test does reaches the cache.

Why the nspawn options:
- ``--register=no --keep-unit``: the host has no systemd as PID 1 (no
  machined, no scope units to create);
- ``--private-network``: the container reaches nothing but its own loopback
  (pip installs from a wheelhouse built on the host, bind-mounted);
- ``SYSTEMD_NSPAWN_API_VFS_WRITABLE=yes``: bwrap's ``--disable-userns``
  writes ``/proc/sys/user/max_user_namespaces`` in its sandbox;
- the init wrapper: on a cgroup v1 (hybrid) host nspawn mounts the v1
  controller hierarchies read-only (it never delegates v1 controllers), so
  the container's systemd could not do what a systemd booted on such a host
  does. The wrapper remounts memory / pids / cpuacct writable, then execs
  systemd as PID 1 (``--boot`` cannot take a wrapper; this is its equivalent).
  Their root in the container is a cgroup made for this container alone.

Commands run inside with ``nsenter`` into the leader's namespaces (there is
no machinectl without a host systemd). The container is stopped by killing
its leader through a pidfd (the whole PID namespace dies with it), then the
processes left in its own cgroups, then those cgroups are removed: nothing
is found by scanning /proc.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("NOETHER_TEST_CACHE", "/var/cache/noether-test"))
SUITE = "bookworm"
PACKAGES = ["systemd", "systemd-sysv", "dbus", "libdbi-perl", "nix-bin", "nix-setup-systemd", "bubblewrap",
            "python3", "python3-venv", "libseccomp2", "patchelf", "curl", "procps", "nodejs"]
RECIPE = 1  # bump when the rootfs preparation below changes
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CGROUP = Path("/sys/fs/cgroup")
# The v1 hierarchies the container's systemd manages (and the daemon's limits use).
WRITABLE_V1 = ("memory", "pids", "cpuacct")
INIT = ("for c in " + " ".join(WRITABLE_V1) + "; do "
        "mountpoint -q /sys/fs/cgroup/$c && mount -o remount,bind,rw /sys/fs/cgroup/$c; done; "
        "exec /lib/systemd/systemd")


def mirror() -> str:
    """The Debian mirror this machine's apt uses."""
    texts = []
    for p in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        with contextlib.suppress(OSError):
            texts.append(p.read_text())
    for text in texts:
        for m in re.finditer(r"^URIs:\s*(\S+)", text, re.M):
            if m.group(1).rstrip("/").endswith("/debian"):
                return m.group(1)
        for m in re.finditer(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+" + SUITE + r"\s", text, re.M):
            return m.group(1)
    return "http://deb.debian.org/debian"


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def rootfs() -> Path:
    key = hashlib.sha256(json.dumps([SUITE, PACKAGES, RECIPE]).encode()).hexdigest()[:16]
    done = CACHE / f"rootfs-{key}"
    if (done / ".noether-complete").exists():
        return done
    with _locked():
        if (done / ".noether-complete").exists():
            return done
        partial = CACHE / f"rootfs-{key}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(done, ignore_errors=True)
        proc = subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
                               str(partial), mirror()], capture_output=True, text=True, timeout=1200)
        if proc.returncode != 0:
            log = (partial / "debootstrap" / "debootstrap.log")
            tail = log.read_text()[-3000:] if log.exists() else proc.stderr[-3000:]
            raise RuntimeError(f"debootstrap failed ({proc.returncode}):\n{tail}")
        (partial / "etc/hostname").write_text("noether-test\n")
        for deb in (partial / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        (partial / ".noether-complete").write_text(json.dumps(PACKAGES) + "\n")
        partial.rename(done)
    return done


def wheelhouse() -> Path:
    """The project's dependencies (and its build backend) as wheels, for pip inside the container."""
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    done = CACHE / f"wheels-{key}"
    if (done / ".noether-complete").exists():
        return done
    with _locked():
        if (done / ".noether-complete").exists():
            return done
        partial = CACHE / f"wheels-{key}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-w",
                               str(partial), str(ROOT), "hatchling"], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"pip wheel failed:\n{proc.stderr[-3000:]}")
        for own in partial.glob("noether_nix-*.whl"):
            own.unlink()  # the container builds the checkout itself, as the README says
        (partial / ".noether-complete").write_text("")
        shutil.rmtree(done, ignore_errors=True)
        partial.rename(done)
    return done


def _hierarchies() -> dict[Path, str]:
    """mount point → this process's cgroup there, for the hierarchies the container gets a cgroup of its own in."""
    out: dict[Path, str] = {}
    v2 = (CGROUP / "cgroup.controllers").exists()
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctls, path = line.split(":", 2)
        if ctls == "":
            mount = CGROUP if v2 else CGROUP / "unified"
        elif ctls == "name=systemd":
            mount = CGROUP / "systemd"
        elif ctls in WRITABLE_V1:
            mount = CGROUP / ctls
        else:
            continue
        if mount.is_dir():
            out[mount] = path
    return out


class Container:
    def __init__(self, root: Path, binds: dict[str, str], log: Path) -> None:
        self.root = root
        self.binds = binds
        self.log_path = log
        self.name = f"svc-test-{uuid.uuid4().hex[:8]}"
        self.cgroups: list[Path] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0
        self.pidfd = -1

    # -------------------------------------------------------------- life

    def start(self, timeout: float = 60) -> float:
        """Boot; returns seconds until systemd reports the system running."""
        for mount, path in _hierarchies().items():
            d = mount / path.lstrip("/") / self.name
            with contextlib.suppress(OSError):
                d.mkdir()
                self.cgroups.append(d)
        procs = [str(d / "cgroup.procs") for d in self.cgroups]

        def join() -> None:  # in the child: the container's cgroups, so nspawn's own bookkeeping goes there
            for f in procs:
                with contextlib.suppress(OSError), open(f, "w") as out:
                    out.write(str(os.getpid()))

        binds = [f"--bind-ro={src}:{dst}" for src, dst in self.binds.items()]
        cmd = ["systemd-nspawn", "--quiet", f"--directory={self.root}", "--volatile=overlay", "--register=no",
               "--keep-unit", "--private-network", f"--machine={self.name}", *binds, "/bin/sh", "-c", INIT]
        env = {"PATH": PATH, "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "yes", "LANG": "C.UTF-8"}
        started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=open(self.log_path, "wb"),  # noqa: SIM115
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True, preexec_fn=join)
        nspawn = self.proc

        def init_pid() -> int:
            """nspawn's child that lives in a new PID namespace: the container's PID 1 (the
            intermediate child nspawn forks first shares ours, and exits)."""
            own = os.readlink("/proc/self/ns/pid")
            for pid in _read(Path(f"/proc/{nspawn.pid}/task/{nspawn.pid}/children")).split():
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/ns/pid") != own:
                        return int(pid)
            return 0

        wait_until(lambda: nspawn.poll() is not None or init_pid() != 0, timeout, what="the container's init")
        if nspawn.poll() is not None:
            raise RuntimeError(f"systemd-nspawn exited {nspawn.returncode}: {self.log_path.read_text()[-2000:]}")
        self.leader = init_pid()
        self.pidfd = os.pidfd_open(self.leader)
        wait_until(lambda: self.path("/run/systemd/private").exists() or nspawn.poll() is not None, timeout,
                   what="systemd's control socket in the container")
        proc = self.sh("systemctl is-system-running --wait", check=False, timeout=timeout)
        if proc.stdout.strip() not in ("running", "degraded"):
            raise RuntimeError(f"the container's systemd is {proc.stdout.strip()!r} ({proc.stderr.strip()}): "
                               f"{self.log_path.read_text()[-2000:]}")
        return time.monotonic() - started

    def stop(self) -> None:
        if self.pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)  # the PID namespace dies with its init
            os.close(self.pidfd)
            self.pidfd = -1
        if self.proc is not None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        for d in self.cgroups:  # what is left in the container's own cgroups, then the cgroups
            for _ in range(50):
                pids = _tree_pids(d)
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.05)
            for sub, _dirs, _files in sorted(os.walk(d, topdown=False), key=lambda t: -len(t[0])):
                for _ in range(50):
                    try:
                        os.rmdir(sub)
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        time.sleep(0.05)
        self.cgroups = []

    # -------------------------------------------------------------- inside

    def command(self, script: str, *, user: str | None = None, env: dict[str, str] | None = None) -> list[str]:
        base = {"PATH": PATH, "LANG": "C.UTF-8", "HOME": "/root", **(env or {})}
        argv = ["nsenter", f"--target={self.leader}", "--all", "--wdns=/"]
        if user is None:
            return [*argv, "env", "-i", *(f"{k}={v}" for k, v in base.items()), "bash", "-c", script]
        base["HOME"] = f"/home/{user}"
        return [*argv, "runuser", "-u", user, "--", "env", "-i", *(f"{k}={v}" for k, v in base.items()),
                "bash", "-c", script]

    def sh(self, script: str, *, user: str | None = None, env: dict[str, str] | None = None, check: bool = True,
           timeout: float = 300) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.command(script, user=user, env=env), capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"in the container ({user or 'root'}): {script}\nexit {proc.returncode}\n"
                                 f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}")
        return proc

    def path(self, inside: str) -> Path:
        """A path inside the container, seen from the host (through its leader's root)."""
        return Path(f"/proc/{self.leader}/root") / inside.lstrip("/")


def _read(p: Path) -> str:
    try:
        return p.read_text()
    except OSError:
        return ""


def _tree_pids(d: Path) -> list[int]:
    out: list[int] = []
    for sub, _dirs, _files in os.walk(d):
        out += [int(x) for x in _read(Path(sub) / "cgroup.procs").split()]
    return out


def wait_until(cond: Callable[[], bool], timeout: float, *, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
