"""The sandboxed program's environment: which variables a run may set, and
how they travel.

bwrap itself always starts with an empty environment: whatever environment
bwrap is exec'd with is read by the host's dynamic loader (``LD_PRELOAD``,
``LD_AUDIT``…) before any namespace or seccomp filter exists. The program's
variables go to bwrap as ``--clearenv --setenv NAME VALUE…`` inside an
``--args FD`` file (a memfd), so they are neither in bwrap's environment nor
in any argv that ``/proc/PID/cmdline`` shows to other users.

A run's own variables (``RunOptions.env``, ``noether run --env``) are checked
by ``check_env`` before anything runs: portable names only, bounded sizes,
and none of the variables that make a loader, allocator, libc or
interpreter run code or load files of the caller's choice.
"""

from __future__ import annotations

import os
import re

from noether_nix.errors import NoetherError

#: POSIX portable environment variable names (uppercase, lowercase, digits,
#: underscore; not starting with a digit).
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

MAX_VARIABLES = 256
MAX_NAME_BYTES = 128
MAX_VALUE_BYTES = 32 * 1024
MAX_TOTAL_BYTES = 256 * 1024

#: Prefixes whose variables steer a loader, allocator or interpreter.
REFUSED_PREFIXES = (
    "LD_",          # glibc's dynamic loader: LD_PRELOAD, LD_AUDIT, LD_LIBRARY_PATH, …
    "MALLOC_",      # glibc malloc tunables and checks
    "PYTHON",       # PYTHONPATH, PYTHONSTARTUP, PYTHONHOME, PYTHONINSPECT, …
    "NODE_",        # NODE_OPTIONS (--require), NODE_PATH, NODE_EXTRA_CA_CERTS, …
    "PERL5",        # PERL5OPT (-M), PERL5LIB, PERL5DB
    "RUBY",         # RUBYOPT, RUBYLIB
    "JAVA_",        # JAVA_TOOL_OPTIONS (-javaagent)
    "_JAVA_",       # _JAVA_OPTIONS
    "JDK_JAVA_",    # JDK_JAVA_OPTIONS
    "DYLD_",        # the same class on other loaders
    "GCONV_",       # iconv modules
    "NIX_",         # Nix's own configuration (NIX_PATH, NIX_CONF_DIR, …)
    "BASH_FUNC_",   # exported shell functions
)
#: Single variables of the same kind.
REFUSED_NAMES = frozenset({
    "GLIBC_TUNABLES", "GCONV_PATH", "LOCPATH", "NLSPATH", "HOSTALIASES", "RES_OPTIONS", "LOCALDOMAIN",
    "BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "PS4", "PROMPT_COMMAND", "IFS",
    "PERLLIB", "PERLIO_DEBUG", "RUBYLIB", "GEM_PATH", "GEM_HOME", "CLASSPATH", "TCLLIBPATH",
    "LUA_PATH", "LUA_CPATH", "LUA_INIT", "OPENSSL_CONF", "OPENSSL_ENGINES", "SSLKEYLOGFILE",
    "GIO_EXTRA_MODULES", "GTK_MODULES", "GTK_PATH", "QT_PLUGIN_PATH", "LIBGL_DRIVERS_PATH",
})


def env_refusal(name: str) -> str | None:
    """Why a run may not set ``name`` for its sandboxed program, or None."""
    if not _NAME.fullmatch(name):
        return "is not a portable variable name (letters, digits and '_', not starting with a digit)"
    if len(name) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} characters"
    upper = name.upper()
    if upper in REFUSED_NAMES or upper.startswith(REFUSED_PREFIXES):
        return ("steers a loader, allocator, libc or interpreter (it could make the program load code or files "
                "of the caller's choice), so no run may set it")
    return None


def check_env(env: dict[str, str] | None, *, where: str = "env") -> None:
    """Refuse, before anything runs, variables a run may not give its stages.

    Raises ``NoetherError`` ``env_not_allowed`` (a loader/interpreter
    variable or a malformed name) or ``invalid_env`` (a value that cannot be
    an environment value, or too much)."""
    if not env:
        return
    if not isinstance(env, dict):
        raise NoetherError("invalid_env", "the environment must map names to text values", path=where)
    if len(env) > MAX_VARIABLES:
        raise NoetherError("invalid_env", f"{len(env)} variables; at most {MAX_VARIABLES} may be given", path=where)
    total = 0
    for name, value in env.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise NoetherError("invalid_env", f"variable {name!r}: names and values must be text", path=where)
        why = env_refusal(name)
        if why is not None:
            raise NoetherError("env_not_allowed", f"variable {name!r} {why}", path=where,
                               hint="give the stage its value under another name")
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise NoetherError("invalid_env", f"variable {name}: its value is not valid text (a lone surrogate?)",
                               path=where) from None
        if "\0" in value:
            raise NoetherError("invalid_env", f"variable {name}: a value cannot contain a NUL character", path=where)
        if size > MAX_VALUE_BYTES:
            raise NoetherError("invalid_env", f"variable {name}: its value is {size} bytes; at most "
                               f"{MAX_VALUE_BYTES} are allowed", path=where)
        total += size + len(name)
    if total > MAX_TOTAL_BYTES:
        raise NoetherError("invalid_env", f"the variables take {total} bytes; at most {MAX_TOTAL_BYTES} are allowed",
                           path=where)


def setenv_args(env: dict[str, str]) -> list[str]:
    """bwrap options that give the sandboxed program exactly ``env``."""
    args = ["--clearenv"]
    for name, value in env.items():
        if "\0" in name or "\0" in value or "=" in name or not name:
            # Never reached for checked input; a NUL would split the --args file.
            raise NoetherError("invalid_env", f"variable {name!r} cannot be passed")
        args += ["--setenv", name, value]
    return args


def args_fd(args: list[str]) -> int:
    """A memfd holding ``args`` NUL-separated, positioned at its start, for
    bwrap's ``--args FD`` (bwrap reads it to the end and closes it)."""
    fd = os.memfd_create("noether-bwrap-args", os.MFD_CLOEXEC)
    try:
        data = b"".join(a.encode("utf-8", "surrogateescape") + b"\0" for a in args)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd
