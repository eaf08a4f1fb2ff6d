"""The seccomp filter is compiled once per user and read back from the home's
cache; a cache entry anyone else could have written is never used."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from noether_nix.sandbox.profile import load_profile
from noether_nix.sandbox.seccomp import cache_key, cached_filter, compile_filter

DENY = list(load_profile().seccomp_deny)


def test_the_cached_program_is_the_compiled_one(tmp_path: Path) -> None:
    first = cached_filter(DENY, cache_dir=tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].stat().st_mode & 0o777 == 0o600
    assert cached_filter(DENY, cache_dir=tmp_path) == first == compile_filter(DENY)
    assert cached_filter(DENY, deny_unix_sockets=True, cache_dir=tmp_path) == compile_filter(DENY, deny_unix_sockets=True)
    assert len(list(tmp_path.iterdir())) == 2  # one entry per distinct filter


def test_a_process_with_the_cache_never_loads_libseccomp(tmp_path: Path) -> None:
    cached_filter(DENY, cache_dir=tmp_path)
    code = ("import sys\nfrom pathlib import Path\nfrom noether_nix.sandbox.seccomp import cached_filter\n"
            f"cached_filter({DENY!r}, cache_dir=Path({str(tmp_path)!r}))\nprint('pyseccomp' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_a_tampered_entry_is_ignored_and_rewritten(tmp_path: Path) -> None:
    good = compile_filter(DENY)
    path = tmp_path / f"seccomp-{cache_key(DENY, deny_unix_sockets=False)}.bpf"
    # An allow-everything program (RET ALLOW), group-writable: someone else could have put it there.
    path.write_bytes(bytes.fromhex("0600000000000000ffff7f00"[:16]))
    os.chmod(path, 0o664)
    assert cached_filter(DENY, cache_dir=tmp_path) == good
    assert path.read_bytes() == good and path.stat().st_mode & 0o777 == 0o600
    path.write_bytes(b"\x06\x00\x00\x00\x00\x00\xff\x7f"[:7])  # ours, but not whole BPF instructions
    os.chmod(path, 0o600)
    assert cached_filter(DENY, cache_dir=tmp_path) == good
