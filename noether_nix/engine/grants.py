"""File grants: which host paths a run lets read_file / write_file reach.

``check_grants`` refuses, before anything runs, a grant no sandbox may get;
``fs_wall`` picks the one granted path that holds the file a stage names,
which becomes that stage's only file wall.
"""

from __future__ import annotations

import os
import posixpath
from typing import Any

from noether_nix.engine.options import RunOptions, StageError
from noether_nix.errors import NoetherError
from noether_nix.model.effects import FsRead, FsWrite
from noether_nix.sandbox.env import check_env
from noether_nix.sandbox.policy import bind_refusal


def abs_norm(path: str) -> str:
    """An absolute path normalised, "//x" (which POSIX normpath keeps) as "/x"."""
    return posixpath.normpath("/" + path.lstrip("/"))


def check_grants(options: RunOptions) -> None:
    """Refuse, before anything runs, a file grant no sandbox may get (and
    environment variables no stage may get: ``sandbox.env.check_env``)."""
    check_env(options.env, where="--env")
    for flag, grants, writable in (("--allow-read", options.allow_read, False),
                                   ("--allow-write", options.allow_write, True)):
        for grant in grants or []:
            if not os.path.isabs(grant):
                raise NoetherError("invalid_grant", f"{grant!r} must be an absolute path", path=flag, exit_code=2)
            root = abs_norm(grant)
            if not os.path.exists(root):
                raise NoetherError("invalid_grant", f"{root} does not exist (a grant binds an existing path)",
                                   path=flag, exit_code=2)
            why = bind_refusal(root, writable=writable)
            if why is not None:
                raise NoetherError("invalid_grant", f"cannot grant {root}: {why}", path=flag, exit_code=2)


def fs_wall(label: str, writes: bool, value: Any, options: RunOptions, path: str) -> FsRead | FsWrite:
    """The wall read_file (``writes`` false) / write_file gets: the granted path
    (``allow_read`` / ``allow_write``) that holds the file the input names, or a refusal."""
    want = value.get("path") if isinstance(value, dict) else None
    if not isinstance(want, str):
        raise StageError("stage_failed", f"stage {label}: 'path' must be text, got {want!r}", path)
    if not os.path.isabs(want):
        # The sandbox has no working directory of the client's to resolve it against.
        raise StageError("path_not_granted", f"stage {label}: relative path {want!r} cannot be granted; "
                         "give an absolute path", path)
    target = abs_norm(want)
    grants = (options.allow_write or []) if writes else [*(options.allow_read or []), *(options.allow_write or [])]
    for grant in grants:
        root = abs_norm(grant)
        if target == root or target.startswith(root.rstrip("/") + "/"):
            if not os.path.exists(root):
                # The wall is a bind of the granted path itself, which must exist.
                raise StageError("path_not_found", f"stage {label}: granted path {root} does not exist "
                                 "(grant an existing directory that holds it)", path)
            return FsWrite(path=root) if writes else FsRead(path=root)
    flag = "--allow-write" if writes else "--allow-read"
    raise StageError("path_not_granted", f"stage {label} would {'write' if writes else 'read'} {target}, "
                     f"which this run does not grant (grant it, or a directory above it, with {flag})", path,
                     hint=f"{flag} {os.path.dirname(target)}")
