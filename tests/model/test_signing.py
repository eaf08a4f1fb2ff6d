from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from noether_nix.errors import NoetherError
from noether_nix.model.signing import (
    SignatureStatus,
    load_or_create_author_key,
    public_key_hex,
    sign_id,
    verify_id,
)

SID = "980de483c8940ece66165badd67c41a7f82aa286d1b170da5c12b149049e8ce3"


def test_author_key_created_once_with_mode_0600(tmp_path: Path) -> None:
    k1 = load_or_create_author_key(tmp_path)
    k2 = load_or_create_author_key(tmp_path)
    assert public_key_hex(k1) == public_key_hex(k2)
    mode = stat.S_IMODE((tmp_path / "author-key.hex").stat().st_mode)
    assert mode == 0o600


def test_verification_distinguishes_the_four_outcomes(tmp_path: Path) -> None:
    key = load_or_create_author_key(tmp_path)
    sig, pub = sign_id(key, SID), public_key_hex(key)
    assert verify_id(SID, sig, pub) is SignatureStatus.VALID
    assert verify_id(SID, None, None) is SignatureStatus.UNSIGNED
    assert verify_id(SID, sig, None) is SignatureStatus.MALFORMED
    assert verify_id(SID, "zz" * 64, pub) is SignatureStatus.MALFORMED
    assert verify_id(SID, sig[:-2], pub) is SignatureStatus.MALFORMED
    other = SID[:-1] + "0"
    assert verify_id(other, sig, pub) is SignatureStatus.BAD_SIGNATURE


# ---------------------------------------------------------------- finding 7: the key is written atomically

CREATE_KEY = r"""
import json, resource, signal, sys
from pathlib import Path
from noether_nix.errors import NoetherError
from noether_nix.model.signing import load_or_create_author_key, public_key_hex
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
if sys.argv[2] != "unlimited":
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
try:
    result = {"key": public_key_hex(load_or_create_author_key(Path(sys.argv[1])))}
except NoetherError as e:
    result = {"error": e.to_dict()}
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
print(json.dumps(result))
"""


def create_key_in_subprocess(home: Path, fsize_limit: int | None) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", CREATE_KEY, str(home), str(fsize_limit or "unlimited")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def assert_clear_failure(error: dict[str, Any], home: Path) -> None:
    assert error["code"] == "author_key_unavailable", error
    assert error["path"] == str(home / "author-key.hex")
    assert "cannot create the author key" in error["message"] and error["hint"]
    # Nothing is left behind: no empty key to break every later `stage add`, no temporary file.
    assert os.listdir(home) == []


def test_a_write_that_fails_leaves_no_key_and_the_next_attempt_succeeds(tmp_path: Path) -> None:
    home = tmp_path / "home"
    failed = create_key_in_subprocess(home, fsize_limit=10)  # the 65-byte seed cannot be written
    assert_clear_failure(failed["error"], home)
    made = create_key_in_subprocess(home, fsize_limit=None)
    assert len(made["key"]) == 64
    assert stat.S_IMODE((home / "author-key.hex").stat().st_mode) == 0o600
    assert os.listdir(home) == ["author-key.hex"]
    assert public_key_hex(load_or_create_author_key(home)) == made["key"]


def test_a_full_disk_leaves_no_key_and_the_next_attempt_succeeds(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tiny tmpfs")
    home = tmp_path / "tiny"
    home.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k,mode=0700", "noether-test", str(home)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        filler = home / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:  # fill the file system to the last byte
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * 512):
                    pass
        finally:
            os.close(fd)
        with pytest.raises(OSError):
            (home / "probe").write_bytes(b"x")
        (home / "probe").unlink(missing_ok=True)
        filler_size = filler.stat().st_size
        assert filler_size > 0
        with pytest.raises(NoetherError) as failed:
            load_or_create_author_key(home)
        assert "No space left on device" in failed.value.message
        filler.unlink()
        assert_clear_failure(failed.value.to_dict(), home)
        key = load_or_create_author_key(home)  # with space again
        assert (home / "author-key.hex").read_text().strip() == bytes(key).hex()
    finally:
        subprocess.run(["umount", str(home)], check=True)


@pytest.mark.parametrize("content", ["", "\n", "not hex at all\n", "ab" * 31 + "\n"])
def test_an_empty_or_corrupt_key_is_a_clear_error_not_replaced(tmp_path: Path, content: str) -> None:
    key_file = tmp_path / "author-key.hex"
    key_file.write_text(content)
    with pytest.raises(NoetherError) as bad:
        load_or_create_author_key(tmp_path)
    err = bad.value.to_dict()
    assert err["code"] == "bad_author_key" and err["path"] == str(key_file)
    assert str(key_file) in err["message"]
    assert ("empty" if not content.strip() else "not a 32-byte hex seed") in err["message"]
    assert f"mv {key_file}" in err["hint"]
    assert key_file.read_text() == content  # never overwritten: it may be the only copy of a real key


def test_stage_add_with_an_empty_key_says_which_file_and_what_to_do(tmp_path: Path, noether_home: Path) -> None:
    (noether_home / "author-key.hex").write_text("")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"name": "k", "input": "Text", "output": "Text",
                                "implementation": "def execute(x):\n    return x\n"}))
    out = subprocess.run([sys.executable, "-m", "noether_nix.cli.main", "stage", "add", "--no-build", str(spec)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert "bad_author_key" in out.stdout and str(noether_home / "author-key.hex") in out.stdout, out.stdout


def test_racing_processes_end_up_with_one_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    procs = [subprocess.Popen([sys.executable, "-c", CREATE_KEY, str(home), "unlimited"], stdout=subprocess.PIPE,
                              text=True) for _ in range(6)]
    keys = {json.loads(p.communicate(timeout=60)[0])["key"] for p in procs}
    assert len(keys) == 1
    assert os.listdir(home) == ["author-key.hex"]
