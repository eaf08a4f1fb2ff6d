"""Signing a stage on its way into the store."""

from __future__ import annotations

from pathlib import Path

import msgspec

from noether_nix.errors import NoetherError
from noether_nix.model.signing import (
    SignatureStatus,
    load_or_create_author_key,
    public_key_hex,
    sign_id,
    verify_id,
)
from noether_nix.model.stage import Stage
from noether_nix.paths import noether_home


def sign_for_store(stage: Stage, home: Path | None = None) -> Stage:
    """Keep a valid embedded signature; sign an unsigned stage with the author key of ``home``."""
    status = verify_id(stage.id, stage.ed25519_signature, stage.signer_public_key)
    if status is SignatureStatus.VALID:
        return stage
    if status is SignatureStatus.UNSIGNED:
        key = load_or_create_author_key(home or noether_home())
        return msgspec.structs.replace(
            stage, ed25519_signature=sign_id(key, stage.id), signer_public_key=public_key_hex(key)
        )
    what = "does not verify" if status is SignatureStatus.BAD_SIGNATURE else "is malformed"
    raise NoetherError(
        f"signature_{status.value}",
        f"the stage's embedded signature {what}",
        path="ed25519_signature",
        hint="remove both ed25519_signature and signer_public_key to sign with your author key",
        exit_code=2,
    )
