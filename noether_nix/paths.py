"""Where noether keeps its state: ``$NOETHER_HOME`` (default ``~/.noether``).

The home holds every peer's kv values and traces and the author key, so it
is private to its owner whatever the umask: the directory is 0700 (made so,
or tightened when it exists and is ours) and every file created under it is
0600. Files are created with an explicit mode, never through the umask.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from noether_nix.settings import settings
from noether_nix.settings_view import (
    default_socket as default_socket,  # lean: clients import it from there
)

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def noether_home() -> Path:
    home = settings().home
    return Path(home) if home else Path.home() / ".noether"


def db_path() -> Path:
    return noether_home() / "noether.db"


def private_dir(path: Path, *, tighten_existing: bool = True) -> Path:
    """``path`` as a directory only its owner may enter: every missing directory
    on the way is created 0700; an existing ``path`` that belongs to us is
    tightened to 0700 unless ``tighten_existing`` is false (someone else's is
    left alone)."""
    missing: list[Path] = []
    p = path
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, PRIVATE_DIR_MODE)
        except FileExistsError:
            continue  # another process made it meanwhile
        os.chmod(d, PRIVATE_DIR_MODE)  # mkdir's mode went through the umask
    if tighten_existing and not missing:
        tighten(path, PRIVATE_DIR_MODE)
    return path


def tighten(path: Path, mode: int) -> None:
    """Take away the bits of ``path`` beyond ``mode`` if it is ours; a missing path is fine."""
    with contextlib.suppress(FileNotFoundError):
        st = os.stat(path)
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & ~mode:
            os.chmod(path, stat.S_IMODE(st.st_mode) & mode)


def ensure_home(home: Path | None = None) -> Path:
    """The home (``$NOETHER_HOME`` unless given), private."""
    return private_dir(home or noether_home())


def open_private(path: Path, flags: int = os.O_RDONLY | os.O_CREAT) -> int:
    """``os.open`` of a file under the home, created 0600 whatever the umask; an
    existing file of ours with looser bits is tightened to 0600."""
    fd = os.open(path, flags | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        st = os.fstat(fd)
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & ~PRIVATE_FILE_MODE:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & PRIVATE_FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def private_file(path: Path) -> Path:
    """``path`` as a file only its owner may read: created empty if missing, else tightened."""
    os.close(open_private(path))
    return path
