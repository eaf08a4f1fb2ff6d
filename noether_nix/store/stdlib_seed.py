"""Registering the stdlib in every store (Active, signed with the stdlib key).

Content addressing makes this idempotent: a stdlib stage already present,
whatever its lifecycle (a tombstoned one stays tombstoned), is left alone.
A marker row remembers which definitions were seeded so opening the store
stays cheap.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from noether_nix.model.effects import effect_set_from_json
from noether_nix.model.identity import signature_id, stage_id, stdlib_implementation_hash
from noether_nix.model.properties import parse_properties
from noether_nix.model.signing import public_key_hex, sign_id, stdlib_key
from noether_nix.model.stage import CostEstimate, Example, Stage, StageSignature
from noether_nix.model.types import parse_type
from noether_nix.store.db import write_txn
from noether_nix.store.stages import StageStore


def _definitions_bytes() -> bytes | None:
    try:
        return (Path(__file__).parent.parent / "stdlib" / "definitions.json").read_bytes()
    except FileNotFoundError:
        return None


def stdlib_stages(defs: list[dict[str, Any]] | None = None) -> list[Stage]:
    if defs is None:
        raw = _definitions_bytes()
        defs = json.loads(raw) if raw else []
    key = stdlib_key()
    pub = public_key_hex(key)
    out = []
    for d in defs:
        name = d["name"]
        i = parse_type(d["input"], path=f"stdlib.{name}.input")
        o = parse_type(d["output"], path=f"stdlib.{name}.output")
        e = effect_set_from_json(d["effects"], path=f"stdlib.{name}.effects")
        ih = stdlib_implementation_hash(name)
        sid = stage_id(name, i, o, e, ih)
        cost = d.get("cost") or {}
        out.append(
            Stage(
                id=sid,
                signature_id=signature_id(name, i, o, e),
                signature=StageSignature(i, o, e, ih),
                capabilities=list(d.get("capabilities", [])),
                cost=CostEstimate(**cost),
                description=d["description"],
                examples=[Example(x["input"], x["output"]) for x in d.get("examples", [])],
                lifecycle="Active",
                ed25519_signature=sign_id(key, sid),
                signer_public_key=pub,
                tags=list(d.get("tags", [])),
                aliases=list(d.get("aliases", [])),
                name=name,
                properties=parse_properties(d.get("properties"), path=f"stdlib.{name}.properties"),
            )
        )
    return out


def ensure_stdlib(store: StageStore) -> int:
    """Add missing stdlib stages; returns how many were added."""
    raw = _definitions_bytes()
    if not raw:
        return 0
    digest = hashlib.sha256(raw).hexdigest()
    store.conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    row = store.conn.execute("SELECT value FROM meta WHERE key = 'stdlib_seeded'").fetchone()
    if row and row[0] == digest:
        return 0
    # One transaction for all of them: a fresh store is seeded in milliseconds, not 85 commits.
    added = sum(r.created for r in store.add_many(stdlib_stages(json.loads(raw))))
    with write_txn(store.conn) as c:
        c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('stdlib_seeded', ?)", (digest,))
    return added
