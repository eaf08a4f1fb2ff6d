"""Where noether keeps its state: ``$NOETHER_HOME`` (default ``~/.noether``)."""

from __future__ import annotations

import os
from pathlib import Path


def noether_home() -> Path:
    env = os.environ.get("NOETHER_HOME")
    return Path(env) if env else Path.home() / ".noether"


def db_path() -> Path:
    return noether_home() / "noether.db"
