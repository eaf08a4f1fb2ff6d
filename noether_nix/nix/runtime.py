"""Runtimes: interpreters that run with only /nix/store visible.

Offline (no nixpkgs, the default here): the host's interpreter and its
complete shared-library closure are staged, imported into the store and
made relocatable by a sandboxed derivation (``nix/host-runtime.nix``).
With nixpkgs available (``NOETHER_RUNTIME_SOURCE=nixpkgs``) the same
interface builds pinned nixpkgs runtimes instead.

A node built the Debian way reads some of its builtins at start from
``/usr/share/nodejs`` (externalized builtins: acorn, cjs-module-lexer,
undici); the import carries them in the runtime and points node at them
(``externalize_node_builtins``).

Each runtime is built once per host interpreter (keyed by its bytes) and
kept alive by a machine-wide GC root (see ``runtime_roots_dir``), which is
also the index: any ``$NOETHER_HOME`` finds an existing runtime in ~1 ms.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import msgspec

from noether_nix.errors import NoetherError
from noether_nix.nix.build import nix_build, nix_expr
from noether_nix.paths import noether_home, open_private, private_dir
from noether_nix.settings import settings

RELOCATE_VERSION = "5"  # 5: manylinux system libraries in the python runtime
# Everyday tools a bash stage can call, imported with the bash runtime when the host has them.
BASH_TOOLS = ("cat", "tr", "sed", "grep", "cut", "sort", "uniq", "head", "tail", "wc", "tee", "date",
              "sleep", "env", "basename", "dirname", "seq", "jq", "awk", "mawk", "expr", "printf")
Source = Literal["host-import", "nixpkgs"]

HOST_INTERPRETERS: dict[str, tuple[str, ...]] = {
    "python": ("/usr/bin/python3",),
    "bash": ("/bin/bash", "/usr/bin/bash"),
    "javascript": ("/usr/bin/node", "/usr/local/bin/node"),
}
BIN_NAMES = {"python": "python3", "bash": "bash", "javascript": "node"}
# Stdlib parts a stage never needs: tests, GUI, packaging bootstraps.
_PY_SKIP = {"test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "__pycache__",
            "site-packages", "dist-packages", "config-3.11-x86_64-linux-gnu"}

RELOCATE_PY = r'''
import os, shutil, stat, subprocess, sys
src, out = os.environ["src"], os.environ["out"]
shutil.copytree(src, out, symlinks=True, ignore=shutil.ignore_patterns("tools", "relocate.py"))
ld = os.path.join(out, "lib", "ld-linux-x86-64.so.2")
tools = os.path.join(src, "tools")
patchelf = [os.path.join(tools, "lib", "ld-linux-x86-64.so.2"), "--library-path",
            os.path.join(tools, "lib"), os.path.join(tools, "patchelf")]
def is_elf(p):
    with open(p, "rb") as f:
        return f.read(4) == b"\x7fELF"
for root, dirs, files in os.walk(out):
    for name in files:
        p = os.path.join(root, name)
        if os.path.islink(p) or p == ld or not is_elf(p):
            continue
        os.chmod(p, os.stat(p).st_mode | stat.S_IWUSR)
        args = ["--set-rpath", os.path.join(out, "lib")]
        if root == os.path.join(out, "bin"):
            args += ["--set-interpreter", ld]
        subprocess.run(patchelf + args + [p], check=True)
# Python: precompile the standard library. The store is read-only, so without
# these every stage start would recompile each module it imports from source.
if os.path.isdir(os.path.join(out, "lib")) and os.path.exists(os.path.join(out, "bin", "python3")):
    import glob
    for stdlib in glob.glob(os.path.join(out, "lib", "python3.*")):
        for root, dirs, files in os.walk(stdlib):  # copied read-only from the store
            os.chmod(root, os.stat(root).st_mode | stat.S_IWUSR)
        subprocess.run([os.path.join(out, "bin", "python3"), "-m", "compileall", "-q",
                        "--invalidation-mode", "unchecked-hash", stdlib], check=False)
for root, dirs, files in os.walk(out):
    for name in files + dirs:
        p = os.path.join(root, name)
        if not os.path.islink(p):
            os.chmod(p, os.stat(p).st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
'''


# Debian's nodejs is built with --shared-builtin-*-path: libnode names files under
# /usr/share/nodejs that node reads when it starts, and aborts without
# ("Cannot load externalized builtin"). Neither the sandbox nor Nix's build
# sandbox has /usr/share/nodejs, and a store path is longer than that prefix,
# so the import copies those files into the runtime's share/nodejs and
# rewrites each name, in place, to /proc/self/fd/9/…: bin/node becomes a
# launcher that opens share/nodejs as fd 9, then execs the real node
# (bin/.node-wrapped). Only NUL-delimited C strings are rewritten (the copy
# of the build's configuration in process.config keeps the old names).
NODE_SHARE = b"/usr/share/nodejs/"
NODE_BUILTINS_FD = 9
_NODE_FD_PREFIX = f"/proc/self/fd/{NODE_BUILTINS_FD}/".encode()
_NODE_EXTERNAL = re.compile(rb"(?<=\x00)/usr/share/nodejs/[\x21-\x7e]+?\.js(?=\x00)")
# The externalized builtins of Debian 12's node 18, for the staleness key only
# (the import finds the actual list in libnode).
_NODE_KNOWN_EXTERNALS = ("cjs-module-lexer/lexer.js", "cjs-module-lexer/dist/lexer.js", "undici/undici-fetch.js",
                         "acorn/dist/acorn.js", "acorn-walk/dist/walk.js")
# Appended to relocate.py for such a node: the launcher (it needs $out and the
# bash runtime, so it is written by the builder).
NODE_LAUNCHER_PY = r'''
bindir = os.path.join(out, "bin")
os.chmod(bindir, os.stat(bindir).st_mode | stat.S_IWUSR)
with open(os.path.join(bindir, "node"), "w") as f:
    f.write("#!%s/bin/bash\n"
            "# Debian's node reads some builtins at start from /usr/share/nodejs; this runtime\n"
            "# carries them in share/nodejs, and its libnode names them /proc/self/fd/%d/...\n"
            "exec %d<%s/share/nodejs\n"
            "exec %s/bin/.node-wrapped \"$@\"\n"
            % (os.environ["shell"], NODE_FD, NODE_FD, out, out))
os.chmod(os.path.join(bindir, "node"), 0o555)
os.chmod(bindir, os.stat(bindir).st_mode & ~stat.S_IWUSR)
'''.replace("NODE_FD", str(NODE_BUILTINS_FD))


def externalize_node_builtins(staging: Path, host: Path = Path("/")) -> bool:
    """Carry the host node's externalized builtins into ``staging`` (see
    ``NODE_SHARE``); True when there were any (bin/node must then be the
    launcher, and the real binary ``bin/.node-wrapped``). ``host``: where the
    host's file system is (tests)."""
    found = False
    for elf in [staging / "bin" / "node", *sorted((staging / "lib").glob("libnode.so*"))]:
        data = elf.read_bytes()
        names = sorted(set(_NODE_EXTERNAL.findall(data)))
        for name in names:
            rel = name[len(NODE_SHARE):].decode()
            source = host / name.decode().lstrip("/")
            if ".." in rel.split("/") or not source.is_file():
                raise NoetherError("runtime_unavailable", f"the host's node reads {name.decode()} when it starts, "
                                   "and there is no such file", path=name.decode(),
                                   hint="reinstall Debian's nodejs and its dependencies "
                                   "(apt-get install --reinstall nodejs libnode108 node-acorn node-undici "
                                   "node-cjs-module-lexer)")
            dest = staging / "share" / "nodejs" / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
            new = _NODE_FD_PREFIX + name[len(NODE_SHARE):]
            data = data.replace(b"\x00" + name + b"\x00", b"\x00" + new + b"\x00" * (len(name) - len(new) + 1))
        if names:
            os.chmod(elf, os.stat(elf).st_mode | 0o200)
            elf.write_bytes(data)
            found = True
    if found:
        os.rename(staging / "bin" / "node", staging / "bin" / ".node-wrapped")
    return found


class Runtime(msgspec.Struct, frozen=True):
    language: str
    store_path: str
    interpreter: str
    source: Source


def runtime_source() -> Source:
    return settings().nix.runtime_source


def normalise_language(language: str) -> str:
    lang = {"python3": "python", "js": "javascript", "node": "javascript", "sh": "bash"}.get(language, language)
    if lang not in HOST_INTERPRETERS:
        raise NoetherError("unsupported_language", f"no runtime for language {language!r}")
    return lang


def _host_binary(language: str) -> Path:
    for candidate in HOST_INTERPRETERS[language]:
        if os.path.exists(candidate):
            return Path(os.path.realpath(candidate))
    raise NoetherError("runtime_unavailable", f"no host interpreter for {language} to import "
                       f"(looked for {', '.join(HOST_INTERPRETERS[language])})",
                       hint="install it, or use NOETHER_RUNTIME_SOURCE=nixpkgs on a machine with nixpkgs")


_LDD_LINE = re.compile(r"=>\s+(\S+)\s+\(|^\s*(/\S+)\s+\(")


def ldd_closure(files: list[Path]) -> set[Path]:
    libs: set[Path] = set()
    for f in files:
        proc = subprocess.run([shutil.which("ldd") or "/usr/bin/ldd", str(f)], capture_output=True, text=True)
        if proc.returncode != 0:
            continue  # not dynamic
        for line in proc.stdout.splitlines():
            m = _LDD_LINE.search(line)
            if m:
                libs.add(Path(m.group(1) or m.group(2)))
    return libs


# The system libraries a manylinux wheel may link against (PEP 600's list,
# without X11/GL): `# requires:` wheels such as pyarrow need them at run time.
MANYLINUX_LIBS = ("libgcc_s.so.1", "libstdc++.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libc.so.6",
                  "libnsl.so.1", "libutil.so.1", "libpthread.so.0", "libresolv.so.2", "libz.so.1")


def _manylinux_libs() -> set[Path]:
    found: set[Path] = set()
    for name in MANYLINUX_LIBS:
        for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64"):
            if (Path(d) / name).exists():
                found.add(Path(d) / name)
                found |= ldd_closure([Path(d) / name])
                break
    return found


def _copy_libs(libs: set[Path], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for lib in libs:
        real = Path(os.path.realpath(lib))
        target = dest / ("ld-linux-x86-64.so.2" if "ld-linux" in lib.name else lib.name)
        if not target.exists():
            shutil.copy2(real, target)


# Directories whose change (a package upgrade) may change what an import stages.
_HOST_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu")


def _fingerprint(language: str, binary: Path) -> str:
    """Cheap key of what an import would stage; a stale key only costs a re-import.

    Equal staged content gives the same store path, so over-approximating is
    safe: the re-import lands on the existing runtime.
    """
    h = hashlib.sha256(f"{RELOCATE_VERSION}:{language}".encode())
    extra = [Path(d) for d in _HOST_LIB_DIRS if os.path.isdir(d)]
    if language == "python":
        extra.append(Path("/usr/lib") / binary.name)
    if language == "javascript":
        extra += [Path(NODE_SHARE.decode()) / rel for rel in _NODE_KNOWN_EXTERNALS]
    for p in (binary, *extra):
        with contextlib.suppress(OSError):
            st = p.stat()
            h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def stage_host_runtime(language: str, staging: Path) -> bool:
    """Copy the interpreter, its tree and its library closure into ``staging``.
    True when the runtime needs the bash runtime (a node launcher, see ``NODE_SHARE``)."""
    binary = _host_binary(language)
    if staging.exists():
        shutil.rmtree(staging)
    (staging / "bin").mkdir(parents=True)
    elf_files = [binary]
    name = BIN_NAMES[language]
    shutil.copy2(binary, staging / "bin" / name)
    if language == "bash":
        for tool in BASH_TOOLS:
            found = shutil.which(tool, path="/usr/bin:/bin")
            if found and not (staging / "bin" / tool).exists():
                real = Path(os.path.realpath(found))
                shutil.copy2(real, staging / "bin" / tool)
                elf_files.append(real)
    if language == "python":
        ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
        host_ver = binary.name if binary.name.startswith("python3.") else ver
        stdlib = Path("/usr/lib") / host_ver
        if not (stdlib / "os.py").exists():
            raise NoetherError("runtime_unavailable", f"the host python's standard library is not at {stdlib}")
        shutil.copytree(stdlib, staging / "lib" / host_ver, symlinks=False,
                        ignore=lambda d, names: [n for n in names if n in _PY_SKIP])
        elf_files += sorted((staging / "lib" / host_ver / "lib-dynload").glob("*.so"))
    libs = ldd_closure(elf_files)
    if language == "python":
        libs |= _manylinux_libs()
    _copy_libs(libs, staging / "lib")
    launcher = language == "javascript" and externalize_node_builtins(staging)
    patchelf = shutil.which("patchelf")
    if patchelf is None:
        raise NoetherError("patchelf_missing", "patchelf is needed to import a runtime offline",
                           hint="apt-get install patchelf (./dev setup)")
    (staging / "tools").mkdir()
    shutil.copy2(os.path.realpath(patchelf), staging / "tools" / "patchelf")
    _copy_libs(ldd_closure([Path(patchelf)]), staging / "tools" / "lib")
    (staging / "relocate.py").write_text(RELOCATE_PY + (NODE_LAUNCHER_PY if launcher else ""))
    return launcher


def runtime_roots_dir() -> Path:
    """Where runtime GC roots live; the roots double as the runtime index.

    A runtime is a property of the host, not of one ``$NOETHER_HOME``: every
    home on the machine shares it, so it is rooted machine-wide when we may
    (root, or the per-user roots of a multi-user Nix), else under the home.
    """
    override = settings().nix.gcroots
    if override:
        return Path(override)
    gcroots = Path("/nix/var/nix/gcroots")
    user = os.environ.get("USER") or str(os.getuid())
    for candidate in (gcroots / "noether", gcroots / "per-user" / user / "noether"):
        if os.access(candidate if candidate.exists() else candidate.parent, os.W_OK):
            return candidate
    return private_dir(noether_home() / "gcroots")


def _indexed_runtime(root: Path, lang: str) -> Runtime | None:
    try:
        store_path = os.readlink(root)
    except OSError:
        return None
    interpreter = f"{store_path}/bin/{BIN_NAMES[lang]}"
    if not os.path.exists(interpreter):
        return None
    return Runtime(lang, store_path, interpreter, "host-import")


def _prune_old_roots(roots: Path, lang: str, keep: Path) -> None:
    # Programs reference their runtime, so their own roots keep an old runtime
    # alive as long as a program built on it is registered.
    for old in roots.glob(f"runtime-{lang}-*"):
        if old != keep and old.is_symlink():
            with contextlib.suppress(OSError):
                old.unlink()


_thread_locks: dict[str, threading.Lock] = {}


@contextlib.contextmanager
def _runtime_lock(lang: str) -> Iterator[None]:
    """One import per language at a time, across threads and processes."""
    lock = _thread_locks.setdefault(lang, threading.Lock())
    path = private_dir(noether_home() / "locks") / f"runtime-{lang}.lock"
    with lock, os.fdopen(open_private(path, os.O_RDWR | os.O_CREAT), "r+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_runtime(language: str) -> Runtime:
    """The runtime for ``language``, building (once) what is missing."""
    lang = normalise_language(language)
    if runtime_source() == "nixpkgs":
        return _nixpkgs_runtime(lang)
    if lang != "python":
        ensure_runtime("python")  # the bootstrap, taken before this language's lock
    with _runtime_lock(lang):
        return _ensure_host_runtime(lang)


def _ensure_host_runtime(lang: str) -> Runtime:
    binary = _host_binary(lang)
    key = _fingerprint(lang, binary)
    roots = runtime_roots_dir()
    root = roots / f"runtime-{lang}-{key}"
    found = _indexed_runtime(root, lang)
    if found is not None:
        return found
    bootstrap = None if lang == "python" else ensure_runtime("python").store_path
    staging = private_dir(noether_home() / "staging") / f"{lang}-{key}"
    needs_shell = stage_host_runtime(lang, staging)
    strs = {"name": f"noether-runtime-{lang}"}
    if bootstrap:
        strs["bootstrap"] = bootstrap
    if needs_shell:
        strs["shell"] = ensure_runtime("bash").store_path
    try:
        out = nix_build(nix_expr("host-runtime.nix"), {"src": str(staging)}, strs, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _prune_old_roots(roots, lang, root)
    return Runtime(lang, out, f"{out}/bin/{BIN_NAMES[lang]}", "host-import")


def _nixpkgs_runtime(lang: str) -> Runtime:
    attr = {"python": "python3", "bash": "bash", "javascript": "nodejs"}[lang]
    # A pinned checkout (the flake sets it to its locked input), else <nixpkgs> from NIX_PATH.
    pinned = settings().nix.nixpkgs
    args = {"nixpkgs": pinned} if pinned else {}
    out = nix_build(nix_expr("nixpkgs-runtime.nix"), args, {"attr": attr}, runtime_roots_dir() / f"nixpkgs-{attr}")
    return Runtime(lang, out, f"{out}/bin/{BIN_NAMES[lang]}", "nixpkgs")
