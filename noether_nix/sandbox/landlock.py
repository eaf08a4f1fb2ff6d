"""Landlock scoping: each sandbox is its own Landlock domain.

Abstract unix sockets live in the network namespace, and a ``Network``
sandbox shares the host's: without more, it could connect to any abstract
socket on the host (an X server, a session bus) and two Network sandboxes
could pass file descriptors to each other (the CVE-2024-27297 class). A
Landlock ruleset that handles no file system or network access but scopes
``LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET`` and ``LANDLOCK_SCOPE_SIGNAL``
(Landlock ABI 6, Linux 6.12) stops exactly that: a process in the domain
can neither connect to an abstract socket nor signal a process created
outside its own domain. It restricts nothing else (no mount or file
access rule), so bwrap works under it unchanged.

The domain is entered in the child right before bwrap is exec'd, so every
sandbox gets a domain of its own. Where the kernel lacks ABI 6 (or bwrap is
setuid, which ``no_new_privs`` would break), ``available()`` is False and the
seccomp filter refuses ``socket(AF_UNIX, …)`` in Network sandboxes instead.
"""

from __future__ import annotations

import ctypes
import functools
import os
import struct

_SYS_CREATE_RULESET = 444  # the same number on every architecture (Linux >= 5.13)
_SYS_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1
_PR_SET_NO_NEW_PRIVS = 38
SCOPE_ABSTRACT_UNIX_SOCKET = 1
SCOPE_SIGNAL = 2
SCOPED_ABI = 6


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


@functools.cache
def abi_version() -> int:
    """The kernel's Landlock ABI version, 0 without Landlock."""
    try:
        v = _libc().syscall(ctypes.c_long(_SYS_CREATE_RULESET), None, ctypes.c_ulong(0),
                            ctypes.c_ulong(_CREATE_RULESET_VERSION))
    except (OSError, AttributeError):
        return 0
    return max(0, int(v))


@functools.cache
def _scope_ruleset() -> int | None:
    """A ruleset fd scoping abstract unix sockets and signals (kept for the process's life)."""
    if abi_version() < SCOPED_ABI:
        return None
    attr = struct.pack("=QQQ", 0, 0, SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL)
    buf = ctypes.create_string_buffer(attr, len(attr))
    fd = _libc().syscall(ctypes.c_long(_SYS_CREATE_RULESET), buf, ctypes.c_ulong(len(attr)), ctypes.c_ulong(0))
    if fd < 0:
        return None
    os.set_inheritable(fd, False)
    return int(fd)


def available() -> bool:
    return _scope_ruleset() is not None


def restrictor() -> tuple[int, ctypes.CDLL] | None:
    """What ``restrict_self`` needs, prepared in the parent (nothing is
    allocated in the child between fork and exec)."""
    fd = _scope_ruleset()
    return None if fd is None else (fd, _libc())


def restrict_self(prepared: tuple[int, ctypes.CDLL]) -> None:
    """Enter a new scoped domain (in the child, before exec). Raises OSError."""
    fd, libc = prepared
    if libc.prctl(ctypes.c_int(_PR_SET_NO_NEW_PRIVS), ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0),
                  ctypes.c_ulong(0)) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if libc.syscall(ctypes.c_long(_SYS_RESTRICT_SELF), ctypes.c_long(fd), ctypes.c_ulong(0)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"landlock_restrict_self failed: {os.strerror(err)}")
