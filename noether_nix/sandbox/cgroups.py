"""Per-run cgroups: memory and process-count caps, usage, and tree kill.

cgroup v2 (``memory.max``, ``pids.max``, ``cgroup.kill``) when this process
sits in a writable (delegated) subtree; cgroup v1 memory/pids/cpuacct
hierarchies when that is what the host has. Without a memory and a
process-count mechanism a sandboxed run is refused unless the operator
allows it (``supervisor.check_limits``); ``mechanisms()`` says what is active.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
#: The leaf a daemon moves into inside its delegated v2 cgroup (delegation.claim_v2);
#: per-run cgroups go beside it, in the delegated cgroup.
LEAF = "daemon"


def _own_paths() -> dict[str, str]:
    """controller (or '' for v2) → this process's cgroup path."""
    out: dict[str, str] = {}
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                out[c] = path
    except OSError:
        pass
    return out


def _writable_dir(p: Path) -> bool:
    return p.is_dir() and os.access(p, os.W_OK)


def _v2_base(own: dict[str, str], root: Path | None = None) -> Path:
    """Where per-run v2 cgroups go: this process's cgroup, or the delegated
    cgroup above it when the daemon sits in its leaf."""
    base = (root or ROOT) / own[""].lstrip("/")
    return base.parent if base.name == LEAF else base


class RunCgroup:
    """One cgroup (per controller on v1) for one sandboxed run."""

    def __init__(self, dirs: dict[str, Path], version: int) -> None:
        self.dirs = dirs
        self.version = version

    @classmethod
    def create(cls, memory_bytes: int, max_pids: int, *, root: Path | None = None) -> RunCgroup | None:
        """A cgroup under this process's own (``root``: where cgroupfs is
        mounted), or None where no controller is writable."""
        root = root or ROOT
        own = _own_paths()
        name = f"noether-{os.getpid()}-{uuid.uuid4().hex[:12]}"  # its creator's pid: see sweep_empty
        v2 = root / "cgroup.controllers"
        if v2.exists() and "" in own:
            d = _v2_base(own, root) / name
            try:
                d.mkdir()
                (d / "memory.max").write_text(str(memory_bytes))
                (d / "pids.max").write_text(str(max_pids))
                with contextlib.suppress(OSError):
                    (d / "memory.swap.max").write_text("0")
                return cls({"": d}, 2)
            except OSError:
                with contextlib.suppress(OSError):
                    d.rmdir()
        dirs: dict[str, Path] = {}
        for ctl in ("memory", "pids", "cpuacct"):
            # The own cgroup must be writable (root, or systemd's delegation handed to us).
            if ctl not in own or not _writable_dir(root / ctl / own[ctl].lstrip("/")):
                continue
            d = root / ctl / own[ctl].lstrip("/") / name
            try:
                d.mkdir()
                if ctl == "memory":
                    (d / "memory.limit_in_bytes").write_text(str(memory_bytes))
                    with contextlib.suppress(OSError):
                        (d / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
                elif ctl == "pids":
                    (d / "pids.max").write_text(str(max_pids))
                dirs[ctl] = d
            except OSError:
                with contextlib.suppress(OSError):
                    d.rmdir()
        if "memory" in dirs or "pids" in dirs:
            return cls(dirs, 1)
        for d in dirs.values():
            with contextlib.suppress(OSError):
                d.rmdir()
        return None

    def has_memory(self) -> bool:
        return "" in self.dirs or "memory" in self.dirs

    def has_pids(self) -> bool:
        return "" in self.dirs or "pids" in self.dirs

    def describe(self) -> dict[str, str | None]:
        """Which limit each of this cgroup's files enforces."""
        if self.version == 2:
            return {"memory": "cgroup v2 memory.max", "pids": "cgroup v2 pids.max"}
        return {"memory": "cgroup v1 memory.limit_in_bytes" if self.has_memory() else None,
                "pids": "cgroup v1 pids.max" if self.has_pids() else None}

    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs.values()]

    def joiner(self) -> Callable[[], None]:
        """What a forked child calls, between fork and exec, to move itself into this cgroup
        (``launch.preexec``): nothing it then starts escapes the cgroup's caps and counts.

        Moving a whole process (``cgroup.procs``) takes the kernel's global
        cgroup_threadgroup_rwsem for writing, and the first writer after ~20 ms of
        quiet waits for an RCU grace period: 6–19 ms of every cold start
        (``bench/cgroup_join.py``). A forked child has one thread, and a v1
        hierarchy's ``tasks`` file moves one thread: writing ``0`` there (the
        calling thread) moves the whole child, and since Linux 6.0 without that
        lock. Where that write is refused (a ``tasks`` file missing or not ours),
        or the caller has more than one thread after all, it joins through
        ``cgroup.procs`` as before; v2 has no per-thread file outside threaded
        subtrees, so it always does."""
        pairs = [(f"{d}/tasks" if self.version == 1 else None, f"{d}/cgroup.procs") for d in self.dirs.values()]

        def join() -> None:
            one_thread = _threads() == 1
            for tasks, procs in pairs:
                if tasks is not None and one_thread:
                    try:
                        _write_existing(tasks, b"0")
                        continue
                    except OSError:
                        pass
                _write_existing(procs, str(os.getpid()).encode())

        return join

    def _read(self, ctl: str, name: str) -> str | None:
        d = self.dirs.get(ctl)
        if d is None:
            return None
        try:  # read per warm call: plain system calls, not pathlib's layers (a cgroup file is one read)
            fd = os.open(f"{d}/{name}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            return os.read(fd, 65536).decode()
        except (OSError, UnicodeDecodeError):
            return None
        finally:
            os.close(fd)

    def oom_killed(self) -> bool:
        if self.version == 2:
            text = self._read("", "memory.events") or ""
        else:
            text = self._read("memory", "memory.oom_control") or ""
        for line in text.splitlines():
            k, _, v = line.partition(" ")
            if k == "oom_kill" and v.strip() not in ("", "0"):
                return True
        if self.version == 1:
            return (self._read("memory", "memory.failcnt") or "0").strip() not in ("0", "")
        return False

    def pids_exhausted(self) -> bool:
        ctl = "" if self.version == 2 else "pids"
        for line in (self._read(ctl, "pids.events") or "").splitlines():
            k, _, v = line.partition(" ")
            if k == "max" and v.strip() not in ("", "0"):
                return True
        return False

    def event_counts(self) -> tuple[int, int]:
        """(OOM kills, process-count refusals) counted in this cgroup so far."""
        def count(text: str | None, key: str) -> int:
            for line in (text or "").splitlines():
                k, _, v = line.partition(" ")
                if k == key and v.strip().isdigit():
                    return int(v)
            return 0

        if self.version == 2:
            oom = count(self._read("", "memory.events"), "oom_kill")
        else:
            oom = count(self._read("memory", "memory.oom_control"), "oom_kill")
        return oom, count(self._read("" if self.version == 2 else "pids", "pids.events"), "max")

    def max_rss_kb(self) -> int | None:
        raw = self._read("", "memory.peak") if self.version == 2 else self._read("memory", "memory.max_usage_in_bytes")
        return int(raw) // 1024 if raw and raw.strip().isdigit() else None

    def cpu_ms(self) -> int | None:
        if self.version == 2:
            for line in (self._read("", "cpu.stat") or "").splitlines():
                if line.startswith("usage_usec "):
                    return int(line.split()[1]) // 1000
            return None
        raw = self._read("cpuacct", "cpuacct.usage")
        return int(raw) // 1_000_000 if raw and raw.strip().isdigit() else None

    def pids(self) -> list[int]:
        out: set[int] = set()
        for f in self.procs_files():
            with contextlib.suppress(OSError):
                out.update(int(x) for x in Path(f).read_text().split())
        return sorted(out)

    def kill(self) -> None:
        """Kill every process in the cgroup (v2 atomically via cgroup.kill)."""
        if self.version == 2:
            with contextlib.suppress(OSError):
                (self.dirs[""] / "cgroup.kill").write_text("1")
                return
        for _ in range(20):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    async def drain(self, timeout_s: float = 10.0) -> bool:
        """Kill everything in the cgroup and wait, on pidfds, until each process
        has exited (no polling); True once the cgroup is empty. A process
        forked meanwhile is found on the next pass. Shielded: a sandbox's
        teardown completes even when its run is cancelled."""
        import trio

        with trio.CancelScope(shield=True), trio.move_on_after(timeout_s):
            while pids := self.pids():
                fds = self._kill_all(pids)
                try:
                    for fd in fds:
                        await trio.lowlevel.wait_readable(fd)  # readable once the process has exited
                finally:
                    for fd in fds:
                        trio.lowlevel.notify_closing(fd)
                        os.close(fd)
                if not fds:  # listed but not openable: exiting this very moment
                    await trio.sleep(0.01)
            return True
        return not self.pids()

    def _kill_all(self, pids: list[int]) -> list[int]:
        """SIGKILL ``pids`` (and, on v2, the whole cgroup) through pidfds: the pidfds, to wait on."""
        fds: list[int] = []
        try:
            for pid in pids:
                with contextlib.suppress(OSError):  # gone already, or not ours to see
                    fds.append(os.pidfd_open(pid))
            for fd in fds:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
            if self.version == 2:
                with contextlib.suppress(OSError):
                    (self.dirs[""] / "cgroup.kill").write_text("1")
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return fds

    def drain_blocking(self, timeout_s: float = 10.0) -> bool:
        """``drain`` without trio, for a caller with no event loop (``sandbox.blocking``):
        kill everything in the cgroup and wait, polling the pidfds (no sleeping loop),
        until each process has exited or ``timeout_s`` has passed; True once the cgroup is empty."""
        deadline = time.monotonic() + timeout_s
        while pids := self.pids():
            if time.monotonic() >= deadline:
                return not self.pids()
            fds = self._kill_all(pids)
            try:
                poller = select.poll()
                for fd in fds:
                    poller.register(fd, select.POLLIN)  # readable once the process has exited
                pending = len(fds)
                while pending and (left := deadline - time.monotonic()) > 0:
                    for fd, _ in poller.poll(max(1, int(left * 1000))):
                        poller.unregister(fd)
                        pending -= 1
            finally:
                for fd in fds:
                    os.close(fd)
            if not fds:  # listed but not openable: exiting this very moment
                time.sleep(0.01)
        return True

    def remove(self) -> None:
        # Right after a kill the cgroup may still count dying tasks (EBUSY): retry briefly.
        for d in self.dirs.values():
            for _ in range(20):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)


def _threads() -> int | None:
    """How many threads this process has (procfs counts them in its task directory's links)."""
    try:
        return os.stat("/proc/self/task").st_nlink - 2
    except OSError:
        return None


def _write_existing(path: str, data: bytes) -> None:
    """Write ``data`` to a file that must exist (a cgroup file is never created)."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _creator_alive(name: str) -> bool:
    """Is the process that created cgroup ``noether-<pid>-<id>`` still running?"""
    parts = name.split("-")
    if len(parts) != 3 or not parts[1].isdigit():
        return False  # an older name without the creator: empty means abandoned
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_empty() -> int:
    """Remove empty ``noether-*`` cgroups left by a process that died before
    removing them (a SIGKILLed daemon). A non-empty one is a live run and
    rmdir refuses it; an empty one whose creator still runs is a run about
    to start (its cgroup is made before its process joins) and is left alone."""
    removed = 0
    own = _own_paths()
    bases = [_v2_base(own)] if "" in own and (ROOT / "cgroup.controllers").exists() else []
    bases += [ROOT / c / own[c].lstrip("/") for c in ("memory", "pids", "cpuacct") if c in own]
    for base in bases:
        with contextlib.suppress(OSError):
            for d in base.glob("noether-*"):
                if _creator_alive(d.name):
                    continue
                with contextlib.suppress(OSError):
                    d.rmdir()
                    removed += 1
    return removed


def mechanisms(*, root: Path | None = None) -> dict[str, object]:
    """What per-run limit mechanisms this host offers (for doctor / health)."""
    probe = RunCgroup.create(64 * 1024 * 1024, 16, root=root)
    if probe is not None:
        probe.remove()
    found = probe.describe() if probe is not None else {"memory": None, "pids": None}
    return {
        "rlimits": ["RLIMIT_AS", "RLIMIT_NOFILE", "RLIMIT_FSIZE", "RLIMIT_CORE"],
        "cgroup": None if probe is None else f"v{probe.version}",
        "cgroup_controllers": [] if probe is None else sorted(c or "unified" for c in probe.dirs),
        "memory": found["memory"],
        "pids": found["pids"],
        "tree_kill": "cgroup.kill" if probe is not None and probe.version == 2 else
                     ("pid namespace + cgroup sweep" if probe is not None else "pid namespace"),
    }
