"""The seccomp filter handed to bwrap (``--seccomp FD``).

bwrap loads only caller-supplied programs, so without this there is no
syscall filter at all. Denied syscalls fail with EPERM; syscalls of a
foreign architecture (e.g. the i386 ABI) kill the process, libseccomp's
default for architectures not in the filter.
"""

from __future__ import annotations

import errno
import os

from noether_nix.errors import NoetherError


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
