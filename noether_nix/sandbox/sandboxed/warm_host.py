"""The warm host: a sandboxed interpreter kept running, that runs one program per call, each in a fresh child.

Started by ``sandbox.warm`` inside bwrap as ``python -c <this file> <config>``,
with the same binds, limits, cgroup and host identity as a cold sandbox of
the same program, and two capabilities inside the sandbox's own user
namespace (CAP_SYS_ADMIN, CAP_SETPCAP) under a seccomp filter that is the
cold one minus mount / umount2 / unshare. It runs no untrusted code itself:
it compiles the program (parsing only) and imports a fixed set of standard
library modules the program names; the program's own top level runs in
each call's child, as in a cold start.

The child of the next call is forked ahead (the *spare*): when the host
starts, and again each time a call has ended and every process of it is
gone. Before it waits for its call, and so before any of the program's
code runs, the spare:

1. enters a new mount namespace and a new IPC namespace, and mounts fresh,
   size-capped tmpfs on /tmp, /dev/shm and (unless a host directory is
   bound there) /work: nothing an earlier call wrote is visible, SysV and
   POSIX IPC objects included;
2. closes every descriptor but its own end of a socketpair to the host
   (the host's control socket included) and enters a Landlock domain of
   its own (where the kernel has scoping), so it can neither signal the
   host nor reach an abstract socket outside it;
3. drops every capability (bounding, ambient, effective, permitted,
   inheritable) and loads the cold sandbox's full seccomp filter.

A call (a message on the host's control socket, fd 0, carrying the call's
stdin, stdout and stderr pipes) is handed to the spare over its socketpair;
the spare takes the pipes as fds 0-2 (its socketpair end goes), restores
the signal dispositions of a fresh interpreter, reseeds ``random`` and runs
the program as ``__main__``. A spare serves exactly one call and exists
only while no call runs: it is one more process of the sandbox while it is
idle, killed with the host (``PR_SET_PDEATHSIG``, and the PID namespace
ends with its init, the host).

When the child exits, the host (the sandbox's child subreaper) SIGKILLs
every other process in the sandbox's PID namespace and reaps them all
before it answers, so no process of a call outlives it; only then does it
fork the next spare. The host never sees a call's input or output: they
flow through the pipes between the supervisor and the child. Its answer is
the exit status and the resource usage.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import stat
import struct
import sys
import types
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 4096, 1 << 14, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_SECCOMP, PR_CAPBSET_DROP = 1, 4, 22, 24
PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 36, 38, 47, 4
SECCOMP_MODE_FILTER = 2
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_RESTRICT_SELF = 444, 446
LANDLOCK_SCOPES = 1 | 2  # abstract unix sockets, signals
CAPABILITY_VERSION_3 = 0x20080522

#: Standard library modules the host may import ahead when the program names
#: them: pure code without side effects at import. Anything else the
#: program imports, it imports itself, in its call.
PRELOAD = frozenset((
    "abc", "array", "asyncio", "base64", "binascii", "bisect", "calendar", "cmath", "codecs", "collections",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "enum", "fractions", "functools",
    "hashlib", "heapq", "hmac", "html", "io", "ipaddress", "itertools", "json", "math", "numbers", "operator",
    "pathlib", "pprint", "random", "re", "secrets", "statistics", "string", "struct", "textwrap", "time",
    "typing", "unicodedata", "urllib.parse", "uuid", "zlib",
))

libc = ctypes.CDLL(None, use_errno=True)


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount_tmpfs(target: str, size: int, mode: int) -> None:
    data = f"size={size},mode={mode:o}".encode()
    check(libc.mount(b"tmpfs", target.encode(), b"tmpfs", ctypes.c_ulong(MS_NOSUID | MS_NODEV), data),
          "mount " + target)


#: The sandbox's private, size-capped tmpfs mounts a call gets fresh (mode as bwrap makes them).
FRESH = (("/tmp", 0o755), ("/dev/shm", 0o755), ("/work", 0o700))


def _unescape(field: str) -> str:
    """A mountinfo path (space, tab, newline and backslash are octal escapes)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def plan_fresh_mounts() -> tuple[list[str], list[str]]:
    """Which of ``FRESH`` a call gets as a new tmpfs (those bwrap made as tmpfs: a
    host directory bound there stays, as in a cold start), and the binds beneath
    them (outermost first) to carry over onto the new tmpfs."""
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            mounts.append((_unescape(fields[4]), fields[sep + 1]))
    top: dict[str, str] = {}
    for point, fstype in mounts:  # later mounts cover earlier ones on the same point
        top[point] = fstype
    fresh = [point for point, _mode in FRESH if top.get(point) == "tmpfs"]
    carried: list[str] = []
    for point, _fstype in mounts:
        parent = next((f for f in fresh if point.startswith(f + "/")), None)
        if parent is None or point in carried:
            continue
        if any(point.startswith(c + "/") for c in carried):
            continue  # carried along with its outer bind (MS_REC)
        carried.append(point)
    return fresh, carried


def load_program(argv: list[str]) -> tuple[types.CodeType, list[str], str, str | None]:
    """The program's code object, its __main__ attributes and its sys.argv / sys.path[0]."""
    if argv[0] == "-c":
        source: str | bytes = argv[1]
        filename, run_argv, path0, file_ = "<string>", ["-c", *argv[2:]], "", None
    else:
        with open(argv[0], "rb") as f:
            source = f.read()
        filename, run_argv, file_ = argv[0], list(argv), argv[0]
        path0 = os.path.dirname(os.path.realpath(argv[0]))
    return compile(source, filename, "exec", dont_inherit=True), run_argv, path0, file_


def names_of(code: types.CodeType) -> set[str]:
    """Every name the code (and the code nested in it) uses: imported modules among them."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= names_of(const)
    return names


def preload(code: types.CodeType) -> None:
    for name in sorted(names_of(code) & PRELOAD):
        with contextlib.suppress(Exception):  # the program will see the failure itself, in its call
            __import__(name)


def scope_ruleset() -> int:
    attr = struct.pack("=QQQ", 0, 0, LANDLOCK_SCOPES)
    buf = ctypes.create_string_buffer(attr, len(attr))
    fd = libc.syscall(ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET), buf, ctypes.c_ulong(len(attr)), ctypes.c_ulong(0))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, "landlock_create_ruleset: " + os.strerror(err))
    return int(fd)


class Host:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        fd = config["seccomp_fd"]
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(fd)
        bpf = b"".join(chunks)
        if not bpf or len(bpf) % 8:
            raise SystemExit("noether warm host: the seccomp filter is not a BPF program")
        self.filter_buf = ctypes.create_string_buffer(bpf, len(bpf))
        self.fprog = SockFprog(len(bpf) // 8, ctypes.cast(self.filter_buf, ctypes.c_void_p))
        self.ruleset = scope_ruleset() if config["landlock"] else None
        self.fresh, self.carried = plan_fresh_mounts()
        self.modes = dict(FRESH)
        # The capabilities left in the bounding set (bwrap keeps only the two it was asked to add):
        # each call's child drops exactly these.
        with open("/proc/self/status") as f:
            bounding = next(int(line.split()[1], 16) for line in f if line.startswith("CapBnd:"))
        self.bounding = [cap for cap in range(64) if bounding >> cap & 1]
        self.code, self.argv, self.path0, self.file = load_program(config["argv"])
        preload(self.code)
        # The host ignores these; each call's child gets back what a fresh interpreter
        # starts with (every other disposition the host never touched).
        self.fresh_handlers: dict[int, Any] = {}
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
                    signal.SIGALRM, signal.SIGPIPE):
            self.fresh_handlers[sig] = signal.getsignal(sig)
            signal.signal(sig, signal.SIG_IGN)
        check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")
        check(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")
        self.ctl = socket.socket(fileno=0)
        self.pid = os.getpid()
        self.spare: tuple[int, socket.socket] | None = None

    # ------------------------------------------------------------ the host

    def serve(self) -> None:
        self.ctl.send(json.dumps({"ready": True}).encode())
        self.spare = self.fork_spare()
        try:
            while self.serve_one():
                pass
        finally:
            self.kill_the_rest()  # the idle spare: nothing of this sandbox outlives its host

    def serve_one(self) -> bool:
        """One call: its pipes arrive, the spare runs it, every process of it is gone, the status goes
        back; then the next call's spare is forked."""
        try:
            msg, fds, _flags, _addr = socket.recv_fds(self.ctl, 64, 3)
        except OSError:
            return False
        if not msg:
            return False  # the supervisor closed: this sandbox ends
        if msg != b"call" or len(fds) != 3:
            for fd in fds:
                os.close(fd)
            return False
        try:
            pid = self.hand_over(fds)
        finally:
            for fd in fds:
                os.close(fd)
        _pid, status, usage = os.wait4(pid, 0)
        self.kill_the_rest()
        answer: dict[str, int] = {"cpu_ms": int((usage.ru_utime + usage.ru_stime) * 1000), "max_rss_kb": usage.ru_maxrss}
        if os.WIFSIGNALED(status):
            answer["signal"] = os.WTERMSIG(status)
        else:
            answer["code"] = os.WEXITSTATUS(status)
        self.ctl.send(json.dumps(answer).encode())
        self.spare = self.fork_spare()
        return True

    def fork_spare(self) -> tuple[int, socket.socket] | None:
        """The next call's child, isolated and waiting for its pipes; None when it cannot be
        forked now (the call that needs it forks one then, and fails if that fails too)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            return None
        if pid == 0:
            self.child(theirs.fileno())  # never returns
        theirs.close()
        return pid, ours

    def hand_over(self, fds: list[int]) -> int:
        """Give the call's pipes to the spare (a fresh one if it is gone); the pid that runs the call."""
        spare, self.spare = self.spare, None
        for attempt in range(2):
            if spare is None:
                spare = self.fork_spare()
                if spare is None:
                    raise OSError("cannot fork the call's child")
            pid, sock = spare
            try:
                socket.send_fds(sock, [b"call"], fds)
                return pid
            except OSError:
                if attempt:
                    raise
                # It ended while idle (nothing signals it; the OOM killer may): it is reaped
                # with the call, and a new one takes the call.
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                spare = None
            finally:
                sock.close()
        raise AssertionError("unreachable")

    @staticmethod
    def kill_the_rest() -> None:
        """SIGKILL every process of the sandbox but this host (its init: ``--as-pid-1``), and
        reap them all: as the init (and child subreaper), every orphan of the call is its child."""
        while True:
            with contextlib.suppress(ProcessLookupError):
                os.kill(-1, signal.SIGKILL)
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                return

    # ------------------------------------------------------------ one call's child

    def child(self, sock: int) -> None:
        """The spare: isolated first, then it waits for its call's pipes on ``sock`` and runs the program."""
        code = 70
        failed: BaseException | None = None
        try:
            os.dup2(sock, 0)  # the host's control socket goes; fd 0 is this child's end of its socketpair
            os.close(sock)
            self.isolate()
        except BaseException as e:  # said on the call's stderr, once it has one
            failed = e
        try:
            listener = socket.socket(fileno=0)
            try:
                msg, fds, _flags, _addr = socket.recv_fds(listener, 64, 3)
            finally:
                listener.detach()  # fd 0 becomes the call's stdin below; the object must not close it
            if msg != b"call" or len(fds) != 3:
                os._exit(0)  # the host ended (or cannot say what it wants): no call for this child
            self.take(fds)
            if failed is not None:
                raise failed
            code = self.run_program()
        except BaseException as e:  # before the program ran: the host's own failure
            with contextlib.suppress(OSError):
                os.write(2, f"noether warm host: {type(e).__name__}: {e}\n".encode())
        os._exit(code)

    def isolate(self) -> None:
        """Everything a call's child gets before it knows its call (see the module doc)."""
        config = self.config
        os.setsid()
        check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
        if os.getppid() != self.pid:
            os._exit(0)  # the host ended before the line above took effect
        check(libc.unshare(CLONE_NEWNS | CLONE_NEWIPC), "unshare")
        check(libc.mount(None, b"/", None, ctypes.c_ulong(MS_REC | MS_PRIVATE), None), "mount --make-rprivate /")
        # The binds beneath the tmpfs about to be replaced, held by fd in this namespace's copy.
        held = [(point, os.open(point, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)) for point in self.carried]
        for point in self.fresh:
            mount_tmpfs(point, config["tmpfs_size"], self.modes[point])
        for point, fd in held:
            parent = os.path.dirname(point)
            os.makedirs(parent, mode=0o755, exist_ok=True)
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                os.mkdir(point, 0o755)
            else:
                os.close(os.open(point, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o444))
            # A recursive bind copies each mount with its flags (read-only stays read-only).
            check(libc.mount(f"/proc/self/fd/{fd}".encode(), point.encode(), None, ctypes.c_ulong(MS_BIND | MS_REC),
                             None), "bind " + point)
            os.close(fd)
        os.chdir("/work")
        # 0 is this child's socketpair end; 1 and 2 are still the host's (its log) until the call's arrive.
        if self.ruleset is None:
            os.closerange(3, 1 << 20)
        else:
            self.close_all_but(self.ruleset)
        check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        if self.ruleset is not None:
            check(libc.syscall(ctypes.c_long(SYS_LANDLOCK_RESTRICT_SELF), ctypes.c_long(self.ruleset),
                               ctypes.c_ulong(0)), "landlock_restrict_self")
            os.close(self.ruleset)
        for cap in self.bounding:
            check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "prctl(PR_CAPBSET_DROP)")
        check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "prctl(PR_CAP_AMBIENT)")
        header = CapHeader(CAPABILITY_VERSION_3, 0)
        data = (CapData * 2)()
        check(libc.capset(ctypes.byref(header), data), "capset")
        check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(self.fprog), 0, 0),
              "prctl(PR_SET_SECCOMP)")

    def take(self, fds: list[int]) -> None:
        """The call arrived: its pipes become fds 0-2 (the socketpair end goes), and the rest of
        a fresh interpreter's state comes back."""
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        for sig, handler in self.fresh_handlers.items():
            try:
                signal.signal(sig, handler)
            except (OSError, ValueError, TypeError):
                continue
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        if "random" in sys.modules:
            # Seeded from the kernel at the call, not when the spare was forked (random's own
            # at-fork hook did that too): two calls never share a stream.
            sys.modules["random"].seed()

    @staticmethod
    def close_all_but(keep: int) -> None:
        os.closerange(3, keep)
        os.closerange(keep + 1, 1 << 20)

    def run_program(self) -> int:
        main = types.ModuleType("__main__")
        main.__dict__["__builtins__"] = __builtins__
        if self.file is not None:
            main.__file__ = self.file
        sys.modules["__main__"] = main
        sys.argv[:] = self.argv
        sys.path[0] = self.path0
        code = 0
        try:
            exec(self.code, main.__dict__)
        except SystemExit as e:
            code = self.exit_code(e.code)
        except BaseException as e:
            # The traceback a cold start prints: from the program's own frame, not this host's.
            tb = e.__traceback__.tb_next if e.__traceback__ is not None else None
            sys.excepthook(type(e), e.with_traceback(tb), tb)
            code = 1
        return self.finish(code)

    @staticmethod
    def exit_code(value: object) -> int:
        if value is None:
            return 0
        if isinstance(value, int):
            return value & 0xFF
        with contextlib.suppress(Exception):
            print(value, file=sys.stderr)
        return 1

    @staticmethod
    def finish(code: int) -> int:
        """What an interpreter does on its way out: threads, atexit, flushed streams."""
        try:
            if "threading" in sys.modules:
                sys.modules["threading"]._shutdown()
            import atexit

            atexit._run_exitfuncs()
        except BaseException:
            pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                code = code or 120
        return code


def main() -> None:
    config = json.loads(sys.argv[1])
    Host(config).serve()


if __name__ == "__main__":
    main()
