"""Security finding 6: ``$NOETHER_HOME`` holds every peer's kv values, traces
and the author key, so nobody but its owner may read it, whatever the umask."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

import noether_nix

# Our interpreter may live where other users cannot reach (a pyenv under /root).
SYSTEM_PYTHON = "/usr/bin/python3"

# Uses the store the way a run does (kv value, a stored run, the author key,
# a runtime lock) under the given umask, then reports every mode under the
# home while the database is still open (its -wal and -shm files exist).
EXERCISE = r"""
import json, os, sys
os.umask(int(sys.argv[2], 8))
from pathlib import Path
from noether_nix.engine.engine import Engine
from noether_nix.model.signing import load_or_create_author_key
from noether_nix.nix.runtime import _runtime_lock
home = Path(sys.argv[1])
engine = Engine()
engine.kv.set("ns", "secret", {"card": "4111 1111 1111 1111"})
engine.runs.start("r1", "c1")
engine.runs.finish("r1", "ok", {"status": "Ok"}, [{"event": "run_finished"}], 0)
load_or_create_author_key(home)
with _runtime_lock("python"):
    pass
modes = {}
for root, dirs, files in os.walk(home):
    for name in [*dirs, *files]:
        p = os.path.join(root, name)
        st = os.lstat(p)
        if not os.path.islink(p):
            modes[os.path.relpath(p, home)] = st.st_mode & 0o7777
modes["."] = os.stat(home).st_mode & 0o7777
print(json.dumps(modes))
"""


def exercise(home: Path, umask: int, python: str = sys.executable, **kw: object) -> dict[str, int]:
    env = {**os.environ, "NOETHER_HOME": str(home)}
    if python != sys.executable:  # a system python that another user can run, given our packages
        env["PYTHONPATH"] = os.pathsep.join([str(Path(noether_nix.__file__).parents[1]),
                                             sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    out = subprocess.run([python, "-c", EXERCISE, str(home), oct(umask)], env=env, capture_output=True,
                         text=True, timeout=120, **kw)  # type: ignore[call-overload]
    assert out.returncode == 0, out.stderr
    modes: dict[str, int] = json.loads(out.stdout)
    return modes


@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask-022", "umask-000"])
def test_a_new_home_is_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    home = tmp_path / "fresh" / "home"  # neither exists yet
    modes = exercise(home, umask)
    assert modes["."] == 0o700
    for name in ("noether.db", "noether.db-wal", "noether.db-shm", "author-key.hex", "locks/runtime-python.lock"):
        assert modes.get(name) == 0o600, (name, modes)
    loose = {name: oct(m) for name, m in modes.items() if m & 0o077}
    assert not loose, loose
    assert stat.S_IMODE((tmp_path / "fresh").stat().st_mode) & 0o077 == 0  # a parent we created, too


def test_an_existing_loose_home_and_store_are_tightened(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    os.chmod(home, 0o755)
    db = home / "noether.db"
    old = os.umask(0o022)
    try:
        # An older version's store: SQLite's own 0644 for the file and its WAL.
        keep = sqlite3.connect(db, isolation_level=None)
        keep.execute("PRAGMA journal_mode=WAL")
        keep.execute("CREATE TABLE t (x)")
        keep.execute("INSERT INTO t VALUES (1)")
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(db.stat().st_mode) == 0o644
        assert stat.S_IMODE((home / "noether.db-wal").stat().st_mode) == 0o644
        modes = exercise(home, 0o022)
    finally:
        keep.close()
    assert modes["."] == 0o700
    for name in ("noether.db", "noether.db-wal", "noether.db-shm"):
        assert modes[name] == 0o600, (name, modes)


def test_a_home_that_is_not_ours_is_left_alone(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to make a directory owned by someone else")
    from noether_nix.paths import ensure_home

    home = tmp_path / "theirs"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    os.chown(home, 65534, 65534)
    # Root owns nothing here: tightening another user's directory is not ours to do.
    ensure_home(home)
    assert stat.S_IMODE(home.stat().st_mode) == 0o755


def test_another_local_user_can_read_nothing(tmp_path: Path) -> None:
    """The daemon's user (here uid 65534, under the loosest umask) writes its store;
    another unprivileged user (65533) can open none of it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch between unprivileged users")
    version = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                             text=True).stdout.strip() if os.path.exists(SYSTEM_PYTHON) else ""
    if version != str(sys.version_info[:2]):
        pytest.skip(f"needs a system python {sys.version_info[:2]} at {SYSTEM_PYTHON} that other users can run")
    base = Path(tempfile.mkdtemp(prefix="noether-private-"))
    try:
        os.chmod(base, 0o711)  # others may pass through, as they can through /var/lib or /home
        home = base / "home"
        home.mkdir()
        os.chown(home, 65534, 65534)
        os.chmod(home, 0o755)
        modes = exercise(home, 0o000, SYSTEM_PYTHON, user=65534, group=65534, extra_groups=[], cwd="/")
        assert modes["."] == 0o700 and modes["noether.db"] == 0o600 and modes["noether.db-wal"] == 0o600
        probe = r"""
import os, sys
home = sys.argv[1]
readable = []
try:
    os.listdir(home)
    readable.append(".")
except PermissionError:
    pass
for name in ("noether.db", "author-key.hex", "locks/runtime-python.lock"):
    try:
        with open(os.path.join(home, name), "rb") as f:
            f.read(1)
        readable.append(name)
    except PermissionError:
        pass
print(",".join(readable))
"""
        out = subprocess.run([SYSTEM_PYTHON, "-c", probe, str(home)], capture_output=True, text=True,
                             user=65533, group=65533, extra_groups=[], cwd="/", timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == ""
        # The owner itself still reads its key (0600 is not 0000).
        assert (home / "author-key.hex").stat().st_uid == 65534
    finally:
        shutil.rmtree(base, ignore_errors=True)
