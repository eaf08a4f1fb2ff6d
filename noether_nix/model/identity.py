"""Hash recipes for stage identity (spec §4), byte-compatible with upstream."""

from __future__ import annotations

import hashlib
from typing import Any

from noether_nix.model.effects import EffectSet
from noether_nix.model.jcs import jcs, serde_compact, sha256_hex
from noether_nix.model.types import NType, to_json

STDLIB_IMPL_PREFIX = "noether-stdlib-v0.1.0:"


def _signature_object(name: str, input: NType, output: NType, effects: EffectSet) -> dict[str, Any]:
    return {"name": name, "input": to_json(input), "output": to_json(output), "effects": effects.to_json()}


def signature_id(name: str, input: NType, output: NType, effects: EffectSet) -> str:
    """SignatureId = sha256(JCS({name, input, output, effects}))."""
    return sha256_hex(jcs(_signature_object(name, input, output, effects)))


def stage_id(
    name: str, input: NType, output: NType, effects: EffectSet, implementation_hash: str
) -> str:
    """StageId = sha256(JCS({name, input, output, effects, implementation_hash}))."""
    obj = _signature_object(name, input, output, effects)
    obj["implementation_hash"] = implementation_hash
    return sha256_hex(jcs(obj))


def legacy_v0_id(input: NType, output: NType, effects: EffectSet, implementation_hash: str) -> str:
    """Pre-JCS ID: serde-compact of the StageSignature struct, no name (spec §4.3).

    Struct order input, output, effects, implementation_hash; NType keeps
    ``kind`` before ``value`` with record keys sorted; floats in serde form.
    """
    obj = {
        "input": to_json(input),
        "output": to_json(output),
        "effects": effects.to_json(),
        "implementation_hash": implementation_hash,
    }
    return sha256_hex(serde_compact(obj, sort_keys=False))


def code_hash(code: str) -> str:
    """implementation_hash of a spec/user stage: sha256 of the code's UTF-8 bytes."""
    return hashlib.sha256(code.encode("utf-8")).hexdigest()


def stdlib_implementation_hash(name: str) -> str:
    return hashlib.sha256((STDLIB_IMPL_PREFIX + name).encode("utf-8")).hexdigest()
