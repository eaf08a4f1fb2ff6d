"""Running ``noether`` the way a person does: in a terminal.

The command gets a pseudo-terminal for stdin, stdout and stderr, of a set
size; what it writes is fed to a VT emulator (pyte), so a test reads the
screen as it is left (live progress drawn and erased, colours applied)
and, separately, everything that was written (``raw``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path

import pyte

ROWS, COLUMNS = 300, 200
SGR_COLOUR = re.compile(rb"\x1b\[[0-9;]*(?:3[0-9]|9[0-7]|38;|4[0-9])[0-9;]*m")
_DURATION = re.compile(r"\b\d+(?:\.\d)? (?:ms|s)\b")
_HEX = re.compile(r"\b[0-9a-f]{8}\b")


@dataclass
class Terminal:
    exit_code: int
    raw: bytes  # every byte written, control sequences included
    lines: list[str]  # the screen as it is left, trailing blanks trimmed

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def coloured(self) -> bool:
        return SGR_COLOUR.search(self.raw) is not None


def normalise(text: str) -> str:
    """Timings and short ids vary from run to run: ``312 ms`` → ``N ms``, ``cce68448`` → ``ID``."""
    return _HEX.sub("ID", _DURATION.sub(lambda m: "N " + m.group(0).split()[1], text))


def in_terminal(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
                timeout: float = 300) -> Terminal:
    """Run ``noether ARGS`` with a terminal for stdin, stdout and stderr."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    full = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "COLUMNS", "LINES")}
    full.update({"TERM": "xterm-256color", **(env or {})})
    proc = subprocess.Popen([sys.executable, "-m", "noether_nix.cli.main", *args], stdin=slave, stdout=slave,
                            stderr=slave, env=full, cwd=cwd, start_new_session=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            if not select.select([master], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError(f"noether {' '.join(args)} did not finish in {timeout} s")
            try:
                chunk = os.read(master, 65536)
            except OSError as e:  # EIO: the other side closed
                if e.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            chunks.append(chunk)
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    raw = b"".join(chunks)
    screen = pyte.Screen(COLUMNS, ROWS)
    stream = pyte.ByteStream(screen)
    stream.feed(raw)
    lines = [line.rstrip() for line in screen.display]
    while lines and not lines[-1]:
        lines.pop()
    return Terminal(code, raw, lines)
