"""``noether service install`` / ``uninstall``: the daemon as a systemd service on a host that is not NixOS.

Plan as data, then execute: :func:`plan_install` turns the unit templates
shipped with the package (``systemd/`` in the repository) into the files
this host needs (absolute ``ExecStart``, the service account, the Nix
integration, the cgroup v1 hand-over), :func:`apply_install` writes them and
records each one with its hash in a root-owned manifest. :func:`uninstall`
removes exactly what the manifest lists and is unchanged since, and leaves
everything else: the state directory and its store, the accounts, a
``daemon.json`` the operator edited, the Nix store.

The sysusers snippet also declares the dedicated sandbox users
(``noether-sbx-0…63``, group ``noether-sbx``: who a sandbox started by root
is, ``sandbox/identity.py``) and the tmpfiles snippet their lock directory
``/run/noether-sandbox-uids``; install checks the users came out as the
sandbox profile expects. Accounts are never removed: files and processes
may still carry their uids, and a uid handed to another account later would
own them.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from noether_nix.errors import NoetherError
from noether_nix.sandbox.bwrap import bwrap_works, find_bwrap
from noether_nix.sandbox.identity import check_range
from noether_nix.sandbox.profile import load_profile
from noether_nix.settings import Settings

UNITS = ("noether.service", "noether.socket", "noether-run@.service", "noether-run@.timer")
DEFAULT_USER = "noether"
DEFAULT_SOCKET_GROUP = "noether-users"
NIX_GROUP = "nix-users"  # Debian's group for nix-daemon's socket (nix-setup-systemd)
MANIFEST = "etc/noether/install-manifest.json"
#: Directories the tmpfiles snippet creates that uninstall may remove (when empty); /var/lib/noether stays.
TMPFILES_DIRS = ("etc/noether", "etc/noether/graphs", "run/noether-sandbox-uids")
CONFIG = "etc/noether/daemon.json"
#: Run by the root daemon's unit on cgroup v1 hosts; `+` = as root, outside the sandboxing.
DELEGATE_HOOK = "ExecStartPre=+{noether} service delegate --user {user}"

class InstallOptions(msgspec.Struct, kw_only=True):
    user: str = DEFAULT_USER
    socket_group: str = DEFAULT_SOCKET_GROUP
    #: How the units start noether: this program's absolute path.
    noether: str = ""
    #: Install under another root (tests, image builds); "/" runs systemd's tools on the live host.
    root: str = "/"


class PlannedFile(msgspec.Struct):
    path: str  # relative to the root
    content: str
    mode: int = 0o644
    only_if_absent: bool = False


class Manifest(msgspec.Struct, kw_only=True):
    version: int = 1
    user: str
    socket_group: str
    files: dict[str, str] = msgspec.field(default_factory=dict)  # path → sha256 as written
    dirs: list[str] = msgspec.field(default_factory=list)  # directories install created


def _sha(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def units_dir() -> Path:
    """The unit templates: ``systemd/`` of a checkout, or the copy inside the installed package."""
    for d in (Path(__file__).resolve().parents[2] / "systemd", Path(__file__).resolve().parent / "units"):
        if (d / "noether.service").is_file():
            return d
    raise NoetherError("units_missing", "the systemd unit templates are not installed with this package",
                       hint="reinstall noether-nix (the wheel ships them as noether_nix/server/units)")


def noether_command() -> str:
    """How a unit runs this very noether (a venv's script is not on systemd's PATH)."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "noether" and os.path.isfile(argv0):
        return os.path.abspath(argv0)
    found = shutil.which("noether")
    if found:
        return os.path.abspath(found)
    return f"{sys.executable} -m noether_nix.cli.main"


def default_config(*, socket_group: str = DEFAULT_SOCKET_GROUP) -> str:
    """daemon.json with every setting at its default, each preceded by a ``"//key"`` comment saying
    what it does (the sentences are the settings' own descriptions, ``noether_nix.settings``)."""
    doc = msgspec.to_builtins(Settings(), builtin_types=())
    doc["allowed_groups"] = [socket_group]
    return _documented(Settings, doc) + "\n"


def _documented(kind: type[msgspec.Struct], values: dict[str, Any], indent: int = 2) -> str:
    info = msgspec.inspect.type_info(kind)
    assert isinstance(info, msgspec.inspect.StructType)
    pad = " " * indent
    lines = []
    if indent == 2:
        lines.append(f'{pad}"//": "noether daemon configuration (noether daemon --config). Every key is shown '
                     'at its default; \\"//key\\" entries document the key below them.",')
    for field in info.fields:
        key, value = field.encode_name, values[field.encode_name]
        schema = getattr(field.type, "extra_json_schema", None) or {}
        text = schema.get("description", "")
        lines.append(f"{pad}{json.dumps('//' + key)}: {json.dumps(text)},")
        nested = field.type
        while isinstance(nested, msgspec.inspect.Metadata):
            nested = nested.type
        if isinstance(nested, msgspec.inspect.StructType):
            lines.append(f"{pad}{json.dumps(key)}: {_documented(nested.cls, value, indent + 2)},")
        else:
            lines.append(f"{pad}{json.dumps(key)}: {json.dumps(value)},")
    lines[-1] = lines[-1].rstrip(",")
    return "{\n" + "\n".join(lines) + "\n" + " " * (indent - 2) + "}"


# ------------------------------------------------------------------ planning


def _uid_of(user: str) -> int | None:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _own_store(user: str) -> bool:
    """Does ``user`` own the Nix store (root on Debian), so it needs no nix-daemon?"""
    uid = 0 if user == "root" else _uid_of(user)
    try:
        return uid is not None and os.stat("/nix/var/nix").st_uid == uid
    except FileNotFoundError:
        return uid == 0


def _service_unit(template: str, opts: InstallOptions, *, via_nix_daemon: bool) -> str:
    out = []
    for line in template.splitlines():
        if line.startswith("User="):
            line = f"User={opts.user}"
        elif line.startswith("Group="):
            line = f"Group={_primary_group(opts.user)}"
        out.append(line)
        if line.startswith("Environment=NOETHER_HOME="):
            if via_nix_daemon:
                # The store is root's: build through nix-daemon, whose socket only nix-users may reach.
                out += ["Environment=NIX_REMOTE=daemon", f"SupplementaryGroups={NIX_GROUP}"]
            if opts.user != "root":
                out.append(DELEGATE_HOOK.format(noether=opts.noether, user=opts.user))
    return "\n".join(out) + "\n"


def _primary_group(user: str) -> str:
    if user == DEFAULT_USER or _uid_of(user) is None:
        return user  # created by the sysusers snippet with a group of the same name
    try:
        return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
    except KeyError:
        return user


def plan_install(opts: InstallOptions) -> tuple[list[PlannedFile], list[str]]:
    """The files to write (paths relative to the root) and warnings for the operator."""
    src = units_dir()
    warnings: list[str] = []
    via_nix_daemon = not _own_store(opts.user)
    if via_nix_daemon and not _group_exists(NIX_GROUP):
        warnings.append(f"group {NIX_GROUP} does not exist: install nix-setup-systemd (Debian's nix-daemon "
                        f"units) so {opts.user} can build through nix-daemon")
    files: list[PlannedFile] = []
    for unit in UNITS:
        text = (src / unit).read_text().replace("/usr/bin/env noether", opts.noether)
        if unit == "noether.service":
            text = _service_unit(text, opts, via_nix_daemon=via_nix_daemon)
        elif unit == "noether.socket":
            text = text.replace("SocketUser=noether", f"SocketUser={opts.user}")
            text = text.replace(f"SocketGroup={DEFAULT_SOCKET_GROUP}", f"SocketGroup={opts.socket_group}")
        elif unit == "noether-run@.service":
            text = text.replace("User=noether", f"User={opts.user}")
            text = text.replace("Group=noether", f"Group={_primary_group(opts.user)}")
        files.append(PlannedFile(f"etc/systemd/system/{unit}", text))
    sysusers = (src / "noether.sysusers.conf").read_text()
    if opts.user != DEFAULT_USER:  # an existing account: not the daemon's (the sandbox users still)
        sysusers = "\n".join(ln for ln in sysusers.splitlines() if not ln.startswith(f"u {DEFAULT_USER} ")) + "\n"
    sysusers = sysusers.replace(f"g {DEFAULT_SOCKET_GROUP} ", f"g {opts.socket_group} ")
    if opts.user != DEFAULT_USER and opts.user != "root" and _uid_of(opts.user) is None:
        raise NoetherError("usage", f"no user named {opts.user!r}: create it first, or omit --user "
                           f"(the {DEFAULT_USER} account is created for you)", path="--user")
    files.append(PlannedFile("etc/sysusers.d/noether.conf", sysusers))
    tmpfiles = (src / "noether.tmpfiles.conf").read_text()
    if opts.user != DEFAULT_USER:
        tmpfiles = tmpfiles.replace(f"0750 {DEFAULT_USER} {DEFAULT_USER}",
                                    f"0750 {opts.user} {_primary_group(opts.user)}")
    files.append(PlannedFile("etc/tmpfiles.d/noether.conf", tmpfiles))
    files.append(PlannedFile(CONFIG, default_config(socket_group=opts.socket_group), only_if_absent=True))
    return files, warnings


# ------------------------------------------------------------------ executing


def _systemd_running(root: Path) -> bool:
    return str(root) == "/" and os.path.isdir("/run/systemd/system")


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise NoetherError("service_install_failed", f"{' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}",
                           exit_code=3)


def _write(root: Path, f: PlannedFile, manifest: Manifest) -> bool:
    target = root / f.path
    missing = []
    for parent in reversed(target.parents):
        if not parent.exists() and parent != root and root in parent.parents:
            missing.append(parent)
    for d in missing:
        d.mkdir(mode=0o755)
        manifest.dirs.append(str(d.relative_to(root)))
    if f.only_if_absent and target.exists():
        return False
    tmp = target.with_name(f".{target.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, f.mode)
    with os.fdopen(fd, "w") as out:
        out.write(f.content)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(tmp, f.mode)
    os.replace(tmp, target)
    manifest.files[f.path] = _sha(f.content)
    return True


def _read_manifest(root: Path) -> Manifest | None:
    try:
        return msgspec.json.decode((root / MANIFEST).read_bytes(), type=Manifest)
    except FileNotFoundError:
        return None
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise NoetherError("invalid_manifest", f"cannot read the install manifest: {e}",
                           path=str(root / MANIFEST)) from None


def _need_root(root: Path) -> None:
    if str(root) == "/" and os.geteuid() != 0:
        raise NoetherError("must_be_root", "installing or removing the service needs root", exit_code=1,
                           hint="run it with sudo")


def sandbox_users_problem() -> str | None:
    """Why root-initiated sandboxes could not run as the dedicated sandbox users
    of the default profile on this host, or None."""
    try:
        uids = load_profile("default").sandbox_uids
        gid, users = check_range(uids)
    except NoetherError as e:
        return f"{e.message} ({e.hint})" if e.hint else e.message
    path = find_bwrap()
    if path is None:
        return "bubblewrap is not installed (apt-get install bubblewrap): every sandboxed stage is refused"
    ok, why = bwrap_works(path, as_uid=users[0], as_gid=gid, fresh=True)
    if not ok:
        return (f"bwrap cannot create its sandbox as a sandbox user (uid {users[0]}): {why}; runs started by root "
                "are refused (unprivileged user namespaces must be enabled: user.max_user_namespaces > 0)")
    return None


def apply_install(opts: InstallOptions,
                  run: Callable[[list[str]], None] = _run) -> dict[str, Any]:
    root = Path(opts.root)
    _need_root(root)
    if not opts.noether:
        opts.noether = noether_command()
    previous = _read_manifest(root)
    manifest = Manifest(user=opts.user, socket_group=opts.socket_group)
    if previous is not None:  # a reinstall keeps what the first install created
        manifest.dirs = list(previous.dirs)
        if CONFIG in previous.files:
            manifest.files[CONFIG] = previous.files[CONFIG]
    live = str(root) == "/"
    files, warnings = plan_install(opts)
    accounts = [f for f in files if f.path.startswith("etc/sysusers.d/")]
    rest = [f for f in files if f not in accounts]
    written: list[str] = []
    kept: list[str] = []
    # The accounts first: the tmpfiles lines and the socket name them.
    for f in accounts:
        _write(root, f, manifest)
        written.append("/" + f.path)
    if live:
        run(["systemd-sysusers", str(root / accounts[0].path)])
        problem = sandbox_users_problem()
        if problem is not None:
            warnings.append(f"sandbox users: {problem}")
    for f in rest:
        if _write(root, f, manifest):
            written.append("/" + f.path)
        else:
            kept.append("/" + f.path)
    if live:
        made = [d for d in TMPFILES_DIRS if not (root / d).exists()]
        run(["systemd-tmpfiles", "--create", str(root / "etc/tmpfiles.d/noether.conf")])
        manifest.dirs += [d for d in made if (root / d).is_dir() and d not in manifest.dirs]
        if _own_store(opts.user) and not os.path.isdir("/nix/store"):
            run(["nix-store", "--init"])
    mpath = root / MANIFEST
    mpath.parent.mkdir(parents=True, exist_ok=True)
    mpath.write_text(msgspec.json.format(msgspec.json.encode(manifest)).decode() + "\n")
    os.chmod(mpath, 0o644)
    if _systemd_running(root):
        run(["systemctl", "daemon-reload"])
    return {"installed": written, "kept": kept, "manifest": "/" + MANIFEST, "user": opts.user,
            "socket_group": opts.socket_group, "noether": opts.noether, "warnings": warnings,
            "next": "systemctl enable --now noether.socket"}


def uninstall(root_dir: str = "/", run: Callable[[list[str]], None] = _run) -> dict[str, Any]:
    root = Path(root_dir)
    _need_root(root)
    manifest = _read_manifest(root)
    if manifest is None:
        raise NoetherError("not_installed", "the service is not installed (no install manifest)",
                           path=str(root / MANIFEST))
    if _systemd_running(root):
        instances = sorted({p.name for p in (root / "etc/systemd/system").glob("*.wants/noether-run@?*.timer")})
        for unit in ["noether.socket", "noether.service", *instances]:
            with contextlib.suppress(NoetherError):
                run(["systemctl", "disable", "--now", unit])
    removed: list[str] = []
    kept: list[str] = []
    for path, digest in manifest.files.items():
        target = root / path
        try:
            current = target.read_bytes()
        except FileNotFoundError:
            continue
        if _sha(current) != digest:
            kept.append(f"/{path} (changed since install)")
            continue
        target.unlink()
        removed.append("/" + path)
    # Links an operator made by enabling our units (timer instances) would dangle.
    for link in (root / "etc/systemd/system").glob("*.wants/noether*"):
        if link.is_symlink() and not link.exists():
            link.unlink()
            removed.append("/" + str(link.relative_to(root)))
    with contextlib.suppress(FileNotFoundError):
        (root / MANIFEST).unlink()
    for d in sorted(manifest.dirs, key=len, reverse=True):
        with contextlib.suppress(OSError):
            (root / d).rmdir()  # only if empty
    if _systemd_running(root):
        run(["systemctl", "daemon-reload"])
    kept += [f"user {manifest.user}, group {manifest.socket_group} and the sandbox users noether-sbx-0…63 "
             "(group noether-sbx): accounts are never removed, their uids may still own files",
             "/var/lib/noether (the store, runs and keys)", "the Nix store"]
    locks = root / "run/noether-sandbox-uids"
    if locks.is_dir():
        kept.append("/run/noether-sandbox-uids (lock files of sandbox users, which runs may still hold; "
                    "/run is emptied at boot)")
    return {"removed": removed, "kept": kept}
