"""Declarative sandbox profiles (``sandboxes/<name>.json``).

Looked up in ``$NOETHER_SANDBOX_PROFILES``, ``/etc/noether/sandboxes``, then
the copy shipped with the package, so an operator can override or tighten a
profile without touching code.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import msgspec

from noether_nix.errors import NoetherError
from noether_nix.sandbox.identity import SandboxUids
from noether_nix.settings import settings

_PACKAGED = Path(__file__).resolve().parent.parent.parent / "sandboxes"
_SEARCH_ENV = "NOETHER_SANDBOX_PROFILES"


class Profile(msgspec.Struct, frozen=True):
    name: str
    ro_binds: list[dict[str, str]]
    network_ro_files: list[str]
    env_allowlist: list[str]
    env_fixed: dict[str, str]
    seccomp_deny: list[str]
    defaults: dict[str, Any]
    maxima: dict[str, Any]
    #: The dedicated users root-initiated sandboxes run as (``identity``).
    sandbox_uids: SandboxUids = SandboxUids()
    #: Run sandboxes even where no memory and process-count limit can be
    #: enforced (no usable cgroup). Off: such runs are refused
    #: (``limits_unavailable``). ``NOETHER_SANDBOX_WITHOUT_LIMITS=1`` in the
    #: environment of the process that starts sandboxes does the same.
    allow_without_limits: bool = False


_BESIDE = Path(__file__).resolve().parent / "profiles"
#: Decoded profiles by (path, inode, size, mtime): a profile is read once until its file changes.
_decoded: dict[tuple[str, int, int, int], Profile] = {}


def _candidates(name: str) -> list[Path]:
    dirs = [Path(d) for d in settings().sandbox.profiles_path]
    dirs += [Path("/etc/noether/sandboxes"), _PACKAGED, _BESIDE]
    return [d / f"{name}.json" for d in dirs]


def load_profile(name_or_path: str = "default") -> Profile:
    paths = [Path(name_or_path)] if name_or_path.endswith(".json") else _candidates(name_or_path)
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        key = (str(p), st.st_ino, st.st_size, st.st_mtime_ns)
        found = _decoded.get(key)
        if found is not None:
            return found
        try:
            profile = msgspec.json.decode(p.read_bytes(), type=Profile)
        except (msgspec.ValidationError, msgspec.DecodeError) as e:
            raise NoetherError("invalid_profile", f"sandbox profile is invalid: {e}", path=str(p)) from None
        if len(_decoded) > 64:
            _decoded.clear()
        _decoded[key] = profile
        return profile
    raise NoetherError("profile_not_found", f"no sandbox profile {name_or_path!r}",
                       hint=f"looked in: {', '.join(str(p) for p in paths)}")
