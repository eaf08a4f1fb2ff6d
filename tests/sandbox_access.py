"""What an operator does before granting a path to sandboxes that root starts.

Those sandboxes run as a dedicated ``noether-sbx-N`` user, never as root
(docs/security.md), so a path they read or write must be readable or
writable by the group ``noether-sbx``: ``chgrp noether-sbx P && chmod g+rX P``
(``g+rwX`` to write). Other starters' sandboxes run as the starter, who
already has access: nothing to do.
"""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path


def share_with_sandbox(path: str | Path, *, writable: bool = False) -> None:
    if os.geteuid() != 0:
        return
    gid = grp.getgrnam("noether-sbx").gr_gid
    mode = os.stat(path).st_mode
    bits = stat.S_IRGRP | (stat.S_IWGRP if writable else 0) | (stat.S_IXGRP if stat.S_ISDIR(mode) else 0)
    os.chown(path, -1, gid)
    os.chmod(path, stat.S_IMODE(mode) | bits)
