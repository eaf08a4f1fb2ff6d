from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from noether_nix.engine.engine import Engine
from noether_nix.model.signing import load_or_create_author_key, public_key_hex, sign_id
from noether_nix.model.stage import Stage, stage_from_spec
from noether_nix.paths import noether_home

AddStage = Callable[..., Stage]


@pytest.fixture
def engine() -> Engine:
    return Engine()


@pytest.fixture
def add(engine: Engine) -> AddStage:
    def add(name: str, code: str, *, input: Any = "Any", output: Any = "Any", effects: list[Any] | None = None,
            language: str = "python") -> Stage:
        stage = stage_from_spec({"name": name, "input": input, "output": output, "effects": effects or [],
                                 "implementation": {"code": code, "language": language}})
        key = load_or_create_author_key(noether_home())
        stage = msgspec.structs.replace(stage, ed25519_signature=sign_id(key, stage.id),
                                        signer_public_key=public_key_hex(key))
        engine.store.add(stage, activate=True)
        return stage

    return add


def graph(root: Any) -> dict[str, Any]:
    return {"description": "test", "version": "1", "root": root}
