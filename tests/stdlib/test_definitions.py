"""definitions.json is the catalog minus identity fields, ships with the package, and re-derives the catalog's IDs."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from noether_nix.stdlib._gen_defs import KEEP, definitions, render
from tests.stdlib.conftest import load_catalog

IDENTITY_FIELDS = {"implementation_hash", "signature_id", "id", "legacy_v0_id", "ed25519_signature",
                   "signer_public_key", "legacy_v1_jcs_noname_id"}


def _typed(v: Any) -> Any:
    """A form where 3 and 3.0 differ, so int/float drift is caught."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return (type(v).__name__, v)
    if isinstance(v, list):
        return [_typed(x) for x in v]
    return {k: _typed(x) for k, x in v.items()}


def shipped() -> list[dict[str, Any]]:
    raw = resources.files("noether_nix.stdlib").joinpath("definitions.json").read_text("utf-8")
    defs: list[dict[str, Any]] = json.loads(raw)
    return defs


def test_definitions_are_the_catalog_without_identity_fields_in_catalog_order() -> None:
    catalog = load_catalog()
    defs = shipped()
    assert [d["name"] for d in defs] == [c["name"] for c in catalog]
    for d, c in zip(defs, catalog, strict=True):
        assert not IDENTITY_FIELDS & set(d), d["name"]
        assert _typed(d) == _typed({k: c[k] for k in KEEP if k in c}), d["name"]


def test_generator_reproduces_the_shipped_file_byte_for_byte() -> None:
    raw = resources.files("noether_nix.stdlib").joinpath("definitions.json").read_text("utf-8")
    assert render(definitions(load_catalog())) == raw


def test_ids_and_signatures_recomputed_from_definitions_match_the_catalog() -> None:
    from noether_nix.store.stdlib_seed import stdlib_stages

    catalog = {c["name"]: c for c in load_catalog()}
    stages = stdlib_stages(shipped())
    assert len(stages) == 85
    for stage in stages:
        expected = catalog[stage.name or ""]
        assert stage.id == expected["id"], stage.name
        assert stage.signature_id == expected["signature_id"], stage.name
        assert stage.ed25519_signature == expected["ed25519_signature"], stage.name
