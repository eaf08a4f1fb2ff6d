"""Ed25519 stage signing (spec §4.5).

The signed message is the ASCII bytes of the 64-char lowercase hex StageId.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import functools
import hashlib
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from noether_nix.errors import NoetherError
from noether_nix.paths import PRIVATE_FILE_MODE, ensure_home, tighten

if TYPE_CHECKING:  # PyNaCl (cffi) is loaded when a key is first used: ~10 ms of start-up otherwise
    import nacl.signing

STDLIB_SEED = hashlib.sha256(b"noether-stdlib-signing-key-v0.1.0").digest()
#: ``public_key_hex(stdlib_key())``, written out so that telling a stdlib stage needs no
#: PyNaCl (tests/model/test_identity.py derives it again).
STDLIB_PUBLIC_KEY = "1d17f5b0d9afdb8724a4e7d86620534b26dbedf5e988ed2dd4a48afb1a9ca4f7"


class SignatureStatus(enum.Enum):
    VALID = "valid"
    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad_signature"
    MALFORMED = "malformed"


def stdlib_key() -> nacl.signing.SigningKey:
    import nacl.signing

    return nacl.signing.SigningKey(STDLIB_SEED)


def public_key_hex(key: nacl.signing.SigningKey) -> str:
    return bytes(key.verify_key).hex()


def sign_id(key: nacl.signing.SigningKey, stage_id: str) -> str:
    return key.sign(stage_id.encode("ascii")).signature.hex()


@functools.lru_cache(maxsize=4096)
def verify_id(stage_id: str, signature_hex: str | None, public_key_hex: str | None) -> SignatureStatus:
    """Distinguish unsigned, malformed (bad hex/length, half-signed), bad and valid.
    A pure function of its arguments, so remembered: a daemon verifies each
    (stage, signature, key) once, not on every run that uses it."""
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
    import nacl.bindings  # not nacl.signing: its key classes and encoders are not needed to verify
    import nacl.exceptions

    try:
        nacl.bindings.crypto_sign_open(sig + stage_id.encode("ascii"), pub)
    except nacl.exceptions.BadSignatureError:
        return SignatureStatus.BAD_SIGNATURE
    except (nacl.exceptions.CryptoError, ValueError):
        return SignatureStatus.MALFORMED
    return SignatureStatus.VALID


AUTHOR_KEY_FILE = "author-key.hex"


def load_or_create_author_key(home: Path) -> nacl.signing.SigningKey:
    """The local author key: a 32-byte hex seed at ``home/author-key.hex``, mode 0600.

    Created on first use, atomically: the seed is written to a 0600 temporary
    file beside it and fsynced, then linked into place (a link never replaces
    an existing key, so two processes racing end up with the same key) and
    the directory fsynced. A failed write (a full disk) leaves no key file;
    the next attempt starts afresh. An existing key that is empty or not a
    hex seed is an error that names the file, never replaced.
    """
    path = home / AUTHOR_KEY_FILE
    doing = "create"
    try:
        ensure_home(home)
        if not os.path.lexists(path):
            _create_key(path)
        doing = "read"
        tighten(path, PRIVATE_FILE_MODE)
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError as e:
        raise NoetherError(
            "author_key_unavailable",
            f"cannot {doing} the author key: {e.strerror or e}",
            path=str(path),
            hint="free disk space or fix the permissions of the directory, then retry",
        ) from None
    try:
        seed = bytes.fromhex(text)
    except ValueError:
        seed = b""
    if len(seed) != 32:
        what = "empty" if not text else "not a 32-byte hex seed"
        raise NoetherError(
            "bad_author_key",
            f"the author key is {what}",
            path=str(path),
            hint=f"restore it from a backup; if it never signed a stage you keep, move it away "
                 f"(mv {path} {path}.bad) and a new key is generated on next use",
        )
    import nacl.signing

    return nacl.signing.SigningKey(seed)


def _create_key(path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        try:
            data = (os.urandom(32).hex() + "\n").encode("ascii")
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # unlike rename, never replaces a key that appeared meanwhile
        except FileExistsError:
            return  # another process made the key first: use theirs
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            # A file system without hard links: rename, unless a key appeared meanwhile.
            if os.path.lexists(path):
                return
            os.rename(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
