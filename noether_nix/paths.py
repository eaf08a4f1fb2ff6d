"""Where noether keeps its state: ``$NOETHER_HOME`` (default ``~/.noether``)."""

from __future__ import annotations

import os
from pathlib import Path


def noether_home() -> Path:
    env = os.environ.get("NOETHER_HOME")
    return Path(env) if env else Path.home() / ".noether"


def db_path() -> Path:
    return noether_home() / "noether.db"


def default_socket() -> str:
    """The daemon's socket when none is named: per user, or the system one for root."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if os.getuid() == 0 and not runtime:
        return "/run/noether/noether.sock"
    return os.path.join(runtime or "/tmp", "noether.sock")
