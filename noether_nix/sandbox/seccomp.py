"""The seccomp filter handed to bwrap (``--seccomp FD``).

bwrap loads only caller-supplied programs, so without this there is no
syscall filter at all. Denied syscalls fail with EPERM; syscalls of a
foreign architecture (e.g. the i386 ABI) kill the process, libseccomp's
default for architectures not in the filter.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from noether_nix.errors import NoetherError

# Syscalls that take a file mode, and which argument it is.
SET_ID_MODE_ARG = {"chmod": 1, "fchmod": 1, "fchmodat": 2, "fchmodat2": 2, "open": 2, "openat": 3, "creat": 1,
                   "mknod": 1, "mknodat": 2}


def compile_filter(deny: list[str]) -> bytes:
    try:
        import pyseccomp as seccomp
    except (ImportError, OSError) as e:
        raise NoetherError("seccomp_unavailable", f"cannot load libseccomp: {e}",
                           hint="install libseccomp2") from None
    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in deny:
        try:
            f.add_rule(seccomp.ERRNO(errno.EPERM), name)
        except (RuntimeError, ValueError, OSError):
            # Unknown to this libseccomp/kernel: nothing to deny.
            continue
    # No setuid / setgid files: whatever uid the sandbox runs as on the host,
    # a file it leaves in a writable bind must never run with that uid's
    # rights for someone else. (Mode argument index per syscall.)
    for name, mode_arg in SET_ID_MODE_ARG.items():
        for bit in (stat.S_ISUID, stat.S_ISGID):
            try:
                f.add_rule(seccomp.ERRNO(errno.EPERM), name, seccomp.Arg(mode_arg, seccomp.MASKED_EQ, bit, bit))
            except (RuntimeError, ValueError, OSError):
                continue
    # openat2 passes its mode inside a struct no filter can read: "not
    # implemented" makes libc and runtimes fall back to openat, filtered above.
    with contextlib.suppress(RuntimeError, ValueError, OSError):
        f.add_rule(seccomp.ERRNO(errno.ENOSYS), "openat2")
    r, w = os.pipe()
    try:
        with os.fdopen(w, "wb") as wf:
            f.export_bpf(wf)
        chunks = []
        while chunk := os.read(r, 65536):
            chunks.append(chunk)
    finally:
        os.close(r)
    return b"".join(chunks)


def filter_fd(program: bytes) -> int:
    """An fd positioned at the start of the BPF program (a sealed-size memfd)."""
    fd = os.memfd_create("noether-seccomp", os.MFD_CLOEXEC)
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
