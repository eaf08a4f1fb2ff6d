from __future__ import annotations

import stat
from pathlib import Path

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
