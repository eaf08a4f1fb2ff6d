"""The stdlib is in every store, with the catalog's IDs and signatures."""

from __future__ import annotations

import json
from pathlib import Path

from noether_nix.model.signing import SignatureStatus, verify_id
from noether_nix.model.stage import stage_to_json
from noether_nix.store.stages import StageStore
from noether_nix.store.stdlib_seed import ensure_stdlib

CATALOG = json.loads(
    (Path(__file__).resolve().parents[3] / "shared" / "spec" / "stdlib-catalog.json").read_text()
)


def test_all_85_registered_active_with_catalog_ids_and_signatures() -> None:
    store = StageStore()
    assert ensure_stdlib(store) == 85
    for entry in CATALOG:
        stage = store.get(entry["id"])
        assert stage is not None, entry["name"]
        assert stage.state == "Active"
        assert stage.signature_id == entry["signature_id"]
        assert stage.ed25519_signature == entry["ed25519_signature"]
        assert verify_id(stage.id, stage.ed25519_signature, stage.signer_public_key) is SignatureStatus.VALID
        doc = stage_to_json(stage)
        assert doc["signature"]["input"] == entry["input"] or entry["name"] == "clamp_percent"
        assert doc["examples"] == entry["examples"]


def test_seeding_is_idempotent_and_keeps_tombstones() -> None:
    store = StageStore()
    ensure_stdlib(store)
    victim = CATALOG[0]["id"]
    store.transition(victim, "Tombstone")
    store.conn.execute("DELETE FROM meta")  # force a re-seed
    assert ensure_stdlib(store) == 0
    got = store.get(victim)
    assert got is not None and got.state == "Tombstone"


def test_legacy_upstream_ids_find_stdlib_stages() -> None:
    store = StageStore()
    ensure_stdlib(store)
    assert store.resolve("b4dfc6b0").name == "text_template"
    assert store.resolve("39731ebb").name == "http_get"
