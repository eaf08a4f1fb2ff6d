"""The seccomp filter handed to bwrap (``--seccomp FD``).

bwrap loads only caller-supplied programs, so without this there is no
syscall filter at all. What it does:

- the profile's deny list fails with EPERM;
- no setuid / setgid file modes (chmod family, open/creat/mknod with those bits);
- ``ioctl`` TIOCSTI and TIOCLINUX fail with EPERM whatever the command's
  upper 32 bits hold (the kernel truncates the command to 32 bits, so a
  filter comparing all 64 is bypassed: CVE-2017-5226, CVE-2019-7303,
  CVE-2023-28100);
- ``clone`` with any namespace flag fails with EPERM, and ``clone3`` (whose
  flags sit in a struct no filter can read) and ``openat2`` (its mode too)
  answer ENOSYS, so libc falls back to the filtered calls;
- **syscalls newer than this review answer ENOSYS** (CVE-2021-41133): every
  number above ``REVIEWED_MAX``, every number this libseccomp cannot name,
  and the few newer arch-specific ones in ``NEWER_THAN_REVIEW``. A kernel
  that gains a syscall does not silently hand it to stages;
- optionally ``socket(AF_UNIX, …)`` fails with EPERM (Network sandboxes on
  hosts without Landlock scoping: see ``landlock``);
- syscalls of a foreign architecture (e.g. the i386 ABI) kill the process.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
from pathlib import Path

from noether_nix.errors import NoetherError

# Syscalls that take a file mode, and which argument it is.
SET_ID_MODE_ARG = {"chmod": 1, "fchmod": 1, "fchmodat": 2, "fchmodat2": 2, "open": 2, "openat": 3, "creat": 1,
                   "mknod": 1, "mknodat": 2}
#: Highest syscall number reviewed for this filter (futex_requeue, Linux 6.7).
#: Since Linux 5.1 new syscalls get the same number on every architecture.
REVIEWED_MAX = 456
#: Newer syscalls that some architectures numbered below REVIEWED_MAX.
NEWER_THAN_REVIEW = ("uretprobe", "uprobe")
#: Numbers up to here get an explicit rule (a kernel reaching it is decades away).
_NUMBERS_COVERED = 1024
TIOCSTI = 0x5412
TIOCLINUX = 0x541C
_LOW32 = 0xFFFFFFFF
_CLONE_NAMESPACES = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
_AF_UNIX = 1
#: Part of every cached filter's key: bump it when ``compile_filter``'s rules change.
FILTER_VERSION = "1"
#: Where libseccomp usually lives; its file is part of the cache key (an upgrade recompiles).
_LIBSECCOMP = ("/usr/lib/x86_64-linux-gnu/libseccomp.so.2", "/usr/lib/aarch64-linux-gnu/libseccomp.so.2",
               "/usr/lib64/libseccomp.so.2", "/usr/lib/libseccomp.so.2", "/lib/x86_64-linux-gnu/libseccomp.so.2")


def compile_filter(deny: list[str], *, deny_unix_sockets: bool = False) -> bytes:
    try:
        import pyseccomp as seccomp
    except (ImportError, OSError) as e:
        raise NoetherError("seccomp_unavailable", f"cannot load libseccomp: {e}",
                           hint="install libseccomp2") from None
    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    arch = seccomp.system_arch()
    ruled: set[int] = set()

    def nr(name: str) -> int | None:
        try:
            return int(seccomp.resolve_syscall(arch, name))
        except (RuntimeError, ValueError, OSError):
            return None  # unknown to this libseccomp/kernel

    def rule(action: int, name: str, *args: object) -> None:
        number = nr(name)
        if number is None or number < 0:
            return
        with contextlib.suppress(RuntimeError, ValueError, OSError):
            f.add_rule(action, number, *args)
            ruled.add(number)

    for name in deny:
        rule(seccomp.ERRNO(errno.EPERM), name)
    # No setuid / setgid files: whatever uid the sandbox runs as on the host,
    # a file it leaves in a writable bind must never run with that uid's
    # rights for someone else. (Mode argument index per syscall.)
    for name, mode_arg in SET_ID_MODE_ARG.items():
        for bit in (stat.S_ISUID, stat.S_ISGID):
            rule(seccomp.ERRNO(errno.EPERM), name, seccomp.Arg(mode_arg, seccomp.MASKED_EQ, bit, bit))
    # Terminal injection: only the low 32 bits of the command reach the driver.
    for cmd in (TIOCSTI, TIOCLINUX):
        rule(seccomp.ERRNO(errno.EPERM), "ioctl", seccomp.Arg(1, seccomp.MASKED_EQ, _LOW32, cmd))
    for flag in _CLONE_NAMESPACES:
        rule(seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    # Flags or modes inside a struct no filter can read: "not implemented"
    # makes libc and runtimes fall back to clone / openat, filtered above.
    for name in ("clone3", "openat2"):
        rule(seccomp.ERRNO(errno.ENOSYS), name)
    if deny_unix_sockets:
        rule(seccomp.ERRNO(errno.EPERM), "socket", seccomp.Arg(0, seccomp.EQ, _AF_UNIX))
    for name in NEWER_THAN_REVIEW:
        rule(seccomp.ERRNO(errno.ENOSYS), name)
    # Default-deny what this review never saw.
    for number in range(_NUMBERS_COVERED):
        if number in ruled:
            continue
        known = True
        try:
            seccomp.resolve_syscall(arch, number)
        except (RuntimeError, ValueError, OSError):
            known = False
        if number > REVIEWED_MAX or not known:
            with contextlib.suppress(RuntimeError, ValueError, OSError):
                f.add_rule(seccomp.ERRNO(errno.ENOSYS), number)
    # A binary tree of syscall numbers: a few comparisons per call, not hundreds.
    with contextlib.suppress(RuntimeError, ValueError, OSError, AttributeError):
        f.set_attr(seccomp.Attr.CTL_OPTIMIZE, 2)
    fd = os.memfd_create("noether-seccomp-export", os.MFD_CLOEXEC)
    with os.fdopen(fd, "w+b") as out:
        f.export_bpf(out)
        out.seek(0)
        return out.read()


def _libseccomp_identity() -> str:
    for path in _LIBSECCOMP:
        with contextlib.suppress(OSError):
            real = os.path.realpath(path)
            st = os.stat(real)
            return f"{real}:{st.st_size}:{st.st_mtime_ns}"
    return "unknown"


def cache_key(deny: list[str], *, deny_unix_sockets: bool) -> str:
    doc = {"v": FILTER_VERSION, "deny": sorted(deny), "unix": deny_unix_sockets, "arch": os.uname().machine,
           "reviewed": REVIEWED_MAX, "lib": _libseccomp_identity()}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]


def _trusted(fd: int) -> bool:
    st = os.fstat(fd)
    return (stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022
            and 0 < st.st_size <= 1 << 20 and st.st_size % 8 == 0)


def cached_filter(deny: list[str], *, deny_unix_sockets: bool = False, cache_dir: Path | None) -> bytes:
    """``compile_filter``'s program, kept on disk under ``cache_dir`` (the
    user's private home): loading libseccomp and compiling the filter cost
    tens of milliseconds per process, reading it back well under one. The
    key covers the rules' inputs, the rules' version and the libseccomp
    file; a file that is not ours, is writable by others or has an
    impossible size is ignored and rewritten. Without ``cache_dir``, compiled."""
    if cache_dir is None:
        return compile_filter(deny, deny_unix_sockets=deny_unix_sockets)
    path = cache_dir / f"seccomp-{cache_key(deny, deny_unix_sockets=deny_unix_sockets)}.bpf"
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if _trusted(fd):
                with os.fdopen(os.dup(fd), "rb") as f:
                    data = f.read()
                if len(data) % 8 == 0 and data:
                    return data
        finally:
            os.close(fd)
    program = compile_filter(deny, deny_unix_sockets=deny_unix_sockets)
    with contextlib.suppress(OSError):  # a cache that cannot be written is only slower
        tmp = cache_dir / f".{path.name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, program)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    return program


def filter_fd(program: bytes) -> int:
    """An fd positioned at the start of the BPF program (a memfd)."""
    fd = os.memfd_create("noether-seccomp", os.MFD_CLOEXEC)
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
