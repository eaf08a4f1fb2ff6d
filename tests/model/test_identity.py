"""Stage identity reproduces upstream's vectors byte for byte."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from noether_nix.model.effects import EffectSet, effect_set_from_json
from noether_nix.model.identity import (
    legacy_v0_id,
    signature_id,
    stage_id,
    stdlib_implementation_hash,
)
from noether_nix.model.jcs import jcs
from noether_nix.model.signing import STDLIB_PUBLIC_KEY, public_key_hex, sign_id, stdlib_key
from noether_nix.model.types import BOOL, NUMBER, TEXT, parse_type, to_json

SPEC = Path(__file__).resolve().parents[3] / "shared" / "spec"
CATALOG: list[dict[str, Any]] = json.loads((SPEC / "stdlib-catalog.json").read_text())


def test_golden_stage_ids_from_upstream_hash_rs() -> None:
    assert stage_id("test", TEXT, NUMBER, EffectSet.pure(), "abc123") == (
        "980de483c8940ece66165badd67c41a7f82aa286d1b170da5c12b149049e8ce3"
    )
    assert stage_id("test", BOOL, BOOL, EffectSet.pure(), "identity") == (
        "9ff5f0c6927b8f2eb767e5ed2288dc07f192b2e8c6e78246fdd452a54296dbbc"
    )


def test_canonical_preimage_bytes() -> None:
    obj = {
        "name": "test",
        "input": to_json(TEXT),
        "output": to_json(NUMBER),
        "effects": EffectSet.pure().to_json(),
        "implementation_hash": "abc123",
    }
    assert jcs(obj) == (
        b'{"effects":{"effects":[{"effect":"Pure"}]},"implementation_hash":"abc123",'
        b'"input":{"kind":"Text"},"name":"test","output":{"kind":"Number"}}'
    )


def test_signature_ids() -> None:
    assert signature_id("test", TEXT, NUMBER, EffectSet.pure()) == (
        "92eed85e07e48e9b7535dbadcabe1bf085ea8f31af835949b591f4b1431b4d50"
    )
    assert signature_id("test", BOOL, BOOL, EffectSet.pure()) == (
        "f81074158431b5c3165e0faf8ecb4074f91009173224b22117048eda00fb4ed8"
    )


def test_stdlib_key_and_signature_vector() -> None:
    key = stdlib_key()
    assert public_key_hex(key) == "1d17f5b0d9afdb8724a4e7d86620534b26dbedf5e988ed2dd4a48afb1a9ca4f7"
    assert sign_id(key, "980de483c8940ece66165badd67c41a7f82aa286d1b170da5c12b149049e8ce3") == (
        "8fbc0bf1e722536cc83f4fca7b2f45610bb5d83d62762b629882b13073feccf8"
        "2590e7ccb9801a6199d28f7a6afd5f62b163523c3ef73e5e183ea92276e3220f"
    )


@pytest.mark.parametrize("entry", CATALOG, ids=[e["name"] for e in CATALOG])
def test_catalog_ids_reproduce(entry: dict[str, Any]) -> None:
    name = entry["name"]
    i, o = parse_type(entry["input"]), parse_type(entry["output"])
    e = effect_set_from_json(entry["effects"])
    ih = stdlib_implementation_hash(name)
    assert ih == entry["implementation_hash"]
    assert signature_id(name, i, o, e) == entry["signature_id"]
    assert stage_id(name, i, o, e, ih) == entry["id"]
    assert legacy_v0_id(i, o, e, ih) == entry["legacy_v0_id"]
    assert sign_id(stdlib_key(), entry["id"]) == entry["ed25519_signature"]


def test_legacy_prefixes_from_upstream_examples() -> None:
    by_name = {e["name"]: e for e in CATALOG}
    expected = {
        "text_template": "b4dfc6b0",
        "http_get": "39731ebb",
        "http_body": "62bdb044",
        "parse_json": "b89d34eb",
        "json_path": "c7d35f7c",
        "text_length": "3dd4e4c6",
        "to_json": "b96bc6ef",
    }
    for name, prefix in expected.items():
        e = by_name[name]
        i, o = parse_type(e["input"]), parse_type(e["output"])
        got = legacy_v0_id(i, o, effect_set_from_json(e["effects"]), stdlib_implementation_hash(name))
        assert got.startswith(prefix), name


def test_clamp_percent_float_bounds_print_as_integers() -> None:
    t = parse_type(
        {"kind": "Refined", "value": {"base": {"kind": "Number"},
                                      "refinement": {"kind": "Range", "min": 0.0, "max": 100.0}}}
    )
    assert jcs(to_json(t)) == (
        b'{"kind":"Refined","value":{"base":{"kind":"Number"},"refinement":{"kind":"Range","max":100,"min":0}}}'
    )


VECTORS = json.loads((SPEC / "vectors.json").read_text())


@pytest.mark.parametrize("v", VECTORS["stage_ids"], ids=lambda v: v["implementation_hash"])
def test_stage_id_vectors(v: dict[str, Any]) -> None:
    i, o = parse_type(v["input"]), parse_type(v["output"])
    e = effect_set_from_json(v["effects"])
    assert stage_id(v["name"], i, o, e, v["implementation_hash"]) == v["id"]
    assert signature_id(v["name"], i, o, e) == v["signature_id"]
    if "canonical_jcs" in v:
        obj = {"name": v["name"], "input": to_json(i), "output": to_json(o), "effects": e.to_json(),
               "implementation_hash": v["implementation_hash"]}
        assert jcs(obj).decode() == v["canonical_jcs"]


def test_stdlib_key_vector() -> None:
    k = VECTORS["stdlib_key"]
    from noether_nix.model.signing import STDLIB_SEED

    assert STDLIB_SEED.hex() == k["seed_hex"]
    assert public_key_hex(stdlib_key()) == k["public_key_hex"] == STDLIB_PUBLIC_KEY
    assert sign_id(stdlib_key(), VECTORS["stage_ids"][0]["id"]) == k["signature_over_980de483_id"]
