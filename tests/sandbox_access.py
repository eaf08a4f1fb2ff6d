"""What an operator does before granting a path to sandboxes that root starts.

Those sandboxes run as a dedicated ``noether-sbx-N`` user, never as root
(docs/security.md), so a path they read or write must be readable or
writable by the group ``noether-sbx``: ``chgrp noether-sbx P && chmod g+rX P``
(``g+rwX`` to write). Other starters' sandboxes run as the starter, who
already has access: nothing to do.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path


def share_with_sandbox(path: str | Path, *, writable: bool = False) -> None:
    if os.geteuid() != 0:
        return
    gid = grp.getgrnam("noether-sbx").gr_gid
    mode = os.stat(path).st_mode
    bits = stat.S_IRGRP | (stat.S_IWGRP if writable else 0) | (stat.S_IXGRP if stat.S_ISDIR(mode) else 0)
    os.chown(path, -1, gid)
    os.chmod(path, stat.S_IMODE(mode) | bits)


#: The host directory examples/files.json reads and writes (its paths are fixed in the example).
EXAMPLE_FILES = Path("/var/tmp/noether-example")


@contextlib.contextmanager
def example_files(*, create: bool = True) -> Iterator[Path]:
    """``EXAMPLE_FILES`` for one test: laid out afresh (``in.txt``, a writable ``out/``) or
    removed (``create=False``), under an exclusive lock held until the block ends. The path
    is fixed by the example, so two test suites on one machine would otherwise remove it
    under each other."""
    with open("/var/tmp/noether-example.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            shutil.rmtree(EXAMPLE_FILES, ignore_errors=True)
            if create:
                (EXAMPLE_FILES / "out").mkdir(parents=True)
                share_with_sandbox(EXAMPLE_FILES / "out", writable=True)  # as the example's description says
                (EXAMPLE_FILES / "in.txt").write_text("hello files\n")
            yield EXAMPLE_FILES
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
