"""Ed25519 stage signing (spec §4.5).

The signed message is the ASCII bytes of the 64-char lowercase hex StageId.
"""

from __future__ import annotations

import enum
import hashlib
import os
from pathlib import Path

import nacl.exceptions
import nacl.signing

from noether_nix.errors import NoetherError

STDLIB_SEED = hashlib.sha256(b"noether-stdlib-signing-key-v0.1.0").digest()


class SignatureStatus(enum.Enum):
    VALID = "valid"
    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad_signature"
    MALFORMED = "malformed"


def stdlib_key() -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(STDLIB_SEED)


def public_key_hex(key: nacl.signing.SigningKey) -> str:
    return bytes(key.verify_key).hex()


def sign_id(key: nacl.signing.SigningKey, stage_id: str) -> str:
    return key.sign(stage_id.encode("ascii")).signature.hex()


def verify_id(stage_id: str, signature_hex: str | None, public_key_hex: str | None) -> SignatureStatus:
    """Distinguish unsigned, malformed (bad hex/length, half-signed), bad and valid."""
    if signature_hex is None and public_key_hex is None:
        return SignatureStatus.UNSIGNED
    if signature_hex is None or public_key_hex is None:
        return SignatureStatus.MALFORMED
    try:
        sig = bytes.fromhex(signature_hex)
        pub = bytes.fromhex(public_key_hex)
    except ValueError:
        return SignatureStatus.MALFORMED
    if len(sig) != 64 or len(pub) != 32:
        return SignatureStatus.MALFORMED
    try:
        nacl.signing.VerifyKey(pub).verify(stage_id.encode("ascii"), sig)
    except nacl.exceptions.BadSignatureError:
        return SignatureStatus.BAD_SIGNATURE
    except (nacl.exceptions.CryptoError, ValueError):
        return SignatureStatus.MALFORMED
    return SignatureStatus.VALID


def load_or_create_author_key(home: Path) -> nacl.signing.SigningKey:
    """The local author key: a 32-byte hex seed at ``home/author-key.hex``, mode 0600.

    Created on first use with O_EXCL so two processes racing both end up
    with the same key.
    """
    path = home / "author-key.hex"
    home.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        seed = os.urandom(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(seed.hex() + "\n")
    text = path.read_text().strip()
    try:
        seed = bytes.fromhex(text)
    except ValueError:
        seed = b""
    if len(seed) != 32:
        raise NoetherError(
            "bad_author_key",
            "author key is not a 32-byte hex seed",
            path=str(path),
            hint="move the file away to have a new key generated",
        )
    return nacl.signing.SigningKey(seed)
