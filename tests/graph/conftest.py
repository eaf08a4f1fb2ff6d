from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from noether_nix.model.signing import load_or_create_author_key, public_key_hex, sign_id
from noether_nix.model.stage import Stage, stage_from_spec
from noether_nix.paths import noether_home
from noether_nix.store.stages import StageStore
from noether_nix.store.stdlib_seed import ensure_stdlib

AddStage = Callable[..., Stage]


@pytest.fixture
def store() -> StageStore:
    s = StageStore()
    ensure_stdlib(s)
    return s


@pytest.fixture
def add_stage(store: StageStore) -> AddStage:
    """Add a signed, Active Python stage built from keyword overrides."""

    def add(name: str, input: Any = "Any", output: Any = "Any", effects: list[Any] | None = None,
            body: str = "return input", sign: bool | str = True, activate: bool = True,
            **extra: Any) -> Stage:
        """``sign``: True (valid), False (unsigned), "bad" (signs another id), "malformed" (not hex)."""
        spec = {"name": name, "input": input, "output": output, "effects": effects or [],
                "implementation": f"def execute(input):\n    {body}\n", **extra}
        stage = stage_from_spec(spec)
        if sign:
            key = load_or_create_author_key(noether_home())
            signature = {"bad": sign_id(key, "0" * 64), "malformed": "zz"}.get(str(sign), sign_id(key, stage.id))
            stage = msgspec.structs.replace(stage, ed25519_signature=signature,
                                            signer_public_key=public_key_hex(key))
        store.add(stage, activate=activate)
        got = store.get(stage.id)
        assert got is not None
        return got

    return add
