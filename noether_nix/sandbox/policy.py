"""Isolation policy and limits.

``IsolationPolicy`` keeps upstream's JSON shape (ro_binds, rw_binds,
work_host, network, env_allowlist; spec §10.2) so upstream policy files
work with ``noether sandbox``; ``Limits`` are ours.
"""

from __future__ import annotations

import os
import posixpath
from typing import Any

import msgspec

from noether_nix.errors import NoetherError
from noether_nix.model.effects import EffectSet, FsRead, FsWrite, Network
from noether_nix.sandbox.profile import Profile


class Bind(msgspec.Struct, frozen=True):
    host: str
    sandbox: str


class IsolationPolicy(msgspec.Struct, frozen=True, omit_defaults=True):
    ro_binds: list[Bind]
    network: bool
    env_allowlist: list[str]
    rw_binds: list[Bind] = msgspec.field(default_factory=list)
    work_host: str | None = None


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """A sandbox's limits. The defaults are the packaged profile's (a test checks
    they agree); the engine starts from its profile's ``defaults`` instead."""

    timeout_s: float = 30.0
    max_output_bytes: int = 10 * 1024 * 1024
    max_stderr_bytes: int = 64 * 1024
    memory_bytes: int = 512 * 1024 * 1024
    max_pids: int = 128
    max_open_files: int = 256
    max_file_size_bytes: int = 64 * 1024 * 1024
    tmpfs_size_bytes: int = 64 * 1024 * 1024

    @classmethod
    def from_profile(cls, profile: Profile, **overrides: float | int | None) -> Limits:
        """``profile``'s defaults with ``overrides`` (None: keep the default); each limit at most
        the profile's maximum, an override above it is refused."""
        values: dict[str, Any] = {k: v for k, v in profile.defaults.items() if k in cls.__struct_fields__}
        for name, value in overrides.items():
            if value is None:
                continue
            if name not in cls.__struct_fields__:
                raise NoetherError("invalid_limit", f"unknown limit {name!r}")
            if value <= 0:
                raise NoetherError("invalid_config", f"limit {name} must be positive, got {value}", path=name)
            ceiling = profile.maxima.get(name)
            if ceiling is not None and value > ceiling:
                raise NoetherError("invalid_config", f"limit {name} = {value} is over the sandbox profile "
                                   f"{profile.name!r}'s maximum of {ceiling}", path=name,
                                   hint="lower it, or raise the maximum in the profile (sandboxes/*.json)")
            values[name] = value
        for name, value in values.items():
            ceiling = profile.maxima.get(name)
            if ceiling is not None and value > ceiling:
                raise NoetherError("invalid_profile", f"the profile's default {name} = {value} is over its own "
                                   f"maximum of {ceiling}", path=f"{profile.name}.defaults.{name}")
        return cls(**values)

    def lowered(self, other: Limits | None = None, **overrides: float | int | None) -> Limits:
        """Per-field minimum: a run may lower limits, never raise them."""
        values = {f: getattr(self, f) for f in self.__struct_fields__}
        if other is not None:
            for f in self.__struct_fields__:
                values[f] = min(values[f], getattr(other, f))
        for f, v in overrides.items():
            if v is not None:
                if f not in values:
                    raise NoetherError("invalid_limit", f"unknown limit {f!r}")
                if v <= 0:
                    raise NoetherError("invalid_limit", f"limit {f} must be positive, got {v}")
                values[f] = min(values[f], v)
        return Limits(**values)


def _check_bind(path: str, *, writable: bool) -> None:
    why = bind_refusal(path, writable=writable)
    if why is not None:
        raise NoetherError("invalid_policy_path", f"cannot bind {path}: {why}", path=path, exit_code=2)


def _check_path(p: str, what: str) -> str:
    if not p.startswith("/"):
        raise NoetherError("invalid_policy_path", f"{what} path {p!r} must be absolute", path=p, exit_code=2)
    if ".." in p.split("/"):
        raise NoetherError("invalid_policy_path", f"{what} path {p!r} must not contain '..'", path=p, exit_code=2)
    norm = posixpath.normpath(p)
    if not os.path.exists(norm):
        raise NoetherError(
            "policy_path_missing", f"{what} path {norm} does not exist on this host", path=norm, exit_code=2,
            hint="create it first: a sandbox binds only existing paths",
        )
    return norm


# Host paths no effect or grant may bind: the sandbox has its own /proc,
# /dev and /work, /sys and the whole root are the host's, and the Nix store
# (bound read-only from the program's closure) must never be written.
_NEVER_BIND = ("/proc", "/sys", "/dev", "/work")
_NEVER_WRITE = (*_NEVER_BIND, "/nix")


def _under(path: str, roots: tuple[str, ...]) -> str | None:
    return next((r for r in roots if path == r or path.startswith(r + "/")), None)


def bind_refusal(path: str, *, writable: bool) -> str | None:
    """Why ``path`` (absolute, normalised) must not become a bind, or None.

    A refused path stays refused whatever names it: the check applies to
    the path and to where its symlinks lead (a read grant of a link to ``/``
    or ``/proc`` is a grant of ``/`` or ``/proc``). bwrap would follow a
    symlink, so a writable path that goes through one could be swapped for
    another target between this check and the bind: only real paths are
    bound writable. (Read-only binds are resolved once, deliberately, and
    bound by fd: ``bwrap.open_bind_fds``.) A Nix store path must stay in
    the store."""
    real = os.path.realpath(path)
    for p in dict.fromkeys((path, real)):
        via = "" if p == path else f" (it leads to {real})"
        if p == "/":
            return f"the whole host file system cannot be bound{via}"
        root = _under(p, _NEVER_WRITE if writable else _NEVER_BIND)
        if root is not None:
            return f"{root} cannot be bound {'writable' if writable else 'into a sandbox'}{via}"
    if writable and real != path:
        return f"it goes through a symlink (it is really {real}); name the real path"
    if _under(path, ("/nix/store",)) and not _under(real, ("/nix/store",)):
        return f"it is a store path that leads out of the store (to {real})"
    return None


def validate(policy: IsolationPolicy) -> IsolationPolicy:
    """Refuse relative, '..', missing, symlinked and forbidden paths before anything runs."""
    for b in policy.ro_binds:
        _check_bind(_check_path(b.host, "read-only bind"), writable=False)
    for b in policy.rw_binds:
        _check_bind(_check_path(b.host, "writable bind"), writable=True)
    if policy.work_host is not None:
        _check_path(policy.work_host, "work dir")
    for b in (*policy.ro_binds, *policy.rw_binds):
        if not b.sandbox.startswith("/") or ".." in b.sandbox.split("/"):
            raise NoetherError("invalid_policy_path", f"sandbox path {b.sandbox!r} must be absolute without '..'",
                               path=b.sandbox, exit_code=2)
    return policy


def policy_from_effects(effects: EffectSet, *, profile: Profile, extra_ro: list[str] | None = None,
                        store_paths: list[str] | None = None) -> IsolationPolicy:
    """The walls a stage's effects grant: FsRead → ro bind, FsWrite → rw bind,
    Network → the host network; everything else adds nothing.

    ``store_paths`` (a program's closure) replaces the profile's bind of the
    whole ``/nix/store``: the stage then sees its own runtime and code, not
    every other stage's program in the store."""
    ro = [Bind(b["host"], b["sandbox"]) for b in profile.ro_binds
          if store_paths is None or b["host"].rstrip("/") != "/nix/store"]
    ro += [Bind(p, p) for p in (store_paths or [])]
    ro += [Bind(p, p) for p in (extra_ro or [])]
    rw: list[Bind] = []
    network = False
    for e in effects.effects:
        if isinstance(e, FsRead):
            ro.append(Bind(e.path, e.path))
        elif isinstance(e, FsWrite):
            rw.append(Bind(e.path, e.path))
        elif isinstance(e, Network):
            network = True
    return validate(IsolationPolicy(ro_binds=ro, rw_binds=rw, network=network,
                                    env_allowlist=list(profile.env_allowlist)))
