"""Content-addressed stage store with lifecycle rules (spec §3.1).

A stage's content (everything but its lifecycle) is immutable once stored:
adding the same stage again is a no-op. The lifecycle is the only mutable
state and moves only along Draft→Active, Active→Deprecated{successor},
Active→Tombstone. At most one stage per signature is Active.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import msgspec

from noether_nix.errors import NoetherError
from noether_nix.model.identity import legacy_v0_id
from noether_nix.model.stage import (
    Lifecycle,
    LifecycleName,
    Stage,
    lifecycle_name,
    stage_from_json,
    stage_to_json,
)
from noether_nix.paths import db_path
from noether_nix.store.db import connect, write_txn
from noether_nix.suggest import did_you_mean

SCHEMA = """
CREATE TABLE IF NOT EXISTS stages (
    id            TEXT PRIMARY KEY,
    signature_id  TEXT NOT NULL,
    name          TEXT,
    legacy_v0_id  TEXT NOT NULL,
    lifecycle     TEXT NOT NULL,
    successor_id  TEXT,
    content       TEXT NOT NULL,
    added_at      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS stages_signature ON stages(signature_id);
CREATE INDEX IF NOT EXISTS stages_name ON stages(name);
CREATE INDEX IF NOT EXISTS stages_legacy ON stages(legacy_v0_id);
"""

ALLOWED_TRANSITIONS: dict[LifecycleName, tuple[LifecycleName, ...]] = {
    "Draft": ("Active",),
    "Active": ("Deprecated", "Tombstone"),
    "Deprecated": (),
    "Tombstone": (),
}
_HEX = set("0123456789abcdef")


class AddResult(msgspec.Struct):
    id: str
    lifecycle: str
    created: bool
    supersedes: list[str] = msgspec.field(default_factory=list)


class StageStore:
    """The stage table of the store database."""

    def __init__(self, path: Path | None = None, conn: sqlite3.Connection | None = None) -> None:
        self.path = path or db_path()
        self.conn = conn or connect(self.path)
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    # ---------------------------------------------------------- reading

    def _row_to_stage(self, row: sqlite3.Row | tuple[Any, ...]) -> Stage:
        content, lifecycle, successor = row
        doc = json.loads(content)
        doc["lifecycle"] = _lifecycle_json(lifecycle, successor)
        return stage_from_json(doc)

    def _select(self, where: str, args: tuple[Any, ...]) -> list[Stage]:
        rows = self.conn.execute(
            f"SELECT content, lifecycle, successor_id FROM stages WHERE {where} ORDER BY id", args
        ).fetchall()
        return [self._row_to_stage(r) for r in rows]

    def get(self, stage_id: str) -> Stage | None:
        found = self._select("id = ?", (stage_id,))
        return found[0] if found else None

    def by_prefix(self, prefix: str) -> list[Stage]:
        p = prefix.lower()
        if not p or not set(p) <= _HEX:
            return []
        return self._select("id >= ? AND id < ?", (p, p + "g"))

    def by_signature(self, signature_id: str) -> list[Stage]:
        return self._select("signature_id = ?", (signature_id,))

    def by_name(self, name: str) -> list[Stage]:
        return self._select("name = ?", (name,))

    def by_legacy(self, ref: str) -> list[Stage]:
        p = ref.lower()
        if not p or not set(p) <= _HEX:
            return []
        return self._select("legacy_v0_id >= ? AND legacy_v0_id < ?", (p, p + "g"))

    def all(self) -> list[Stage]:
        return self._select("1", ())

    def names(self) -> list[str]:
        """The names of the stages that may still be used (not Tombstoned), for "did you mean"."""
        return [r[0] for r in self.conn.execute(
            "SELECT DISTINCT name FROM stages WHERE name IS NOT NULL AND lifecycle != 'Tombstone'")]

    def count(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT lifecycle, count(*) FROM stages GROUP BY lifecycle").fetchall()
        return {k: v for k, v in rows}

    def resolve(self, ref: str) -> Stage:
        """Find one stage for a user reference.

        Order: full StageId, unique hex prefix, SignatureId (its Active
        stage), legacy v0 ID or prefix, name (Active wins). Ambiguity is an
        error that lists the candidates.
        """
        ref = ref.strip()
        exact = self.get(ref)
        if exact:
            return exact
        for finder, what in ((self.by_prefix, "id prefix"),):
            found = finder(ref)
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise _ambiguous(ref, what, found)
        by_sig = self.by_signature(ref)
        if by_sig:
            active = [s for s in by_sig if s.state == "Active"]
            return (active or by_sig)[0]
        legacy = self.by_legacy(ref)
        if len(legacy) == 1:
            return legacy[0]
        if len(legacy) > 1:
            raise _ambiguous(ref, "legacy id prefix", legacy)
        named = self.by_name(ref)
        active = [s for s in named if s.state == "Active"]
        pick = active or named
        if len(pick) == 1:
            return pick[0]
        if len(pick) > 1:
            raise _ambiguous(ref, "name", pick)
        raise NoetherError(
            "stage_not_found",
            f"no stage matches {ref!r}{did_you_mean(ref, self.names())} (tried id, id prefix, signature id, "
            "legacy id, name)",
            path=ref,
        )

    # ---------------------------------------------------------- writing

    def add(self, stage: Stage, *, activate: bool | None = None) -> AddResult:
        """Store a stage. Content-addressed: an existing ID is left untouched.

        ``activate`` (default: the stage's own lifecycle is Active) promotes it
        and deprecates the previous Active stage of the same signature.
        """
        with write_txn(self.conn) as c:
            return self._add(c, stage, activate)

    def add_many(self, stages: list[Stage]) -> list[AddResult]:
        """``add`` for each stage, all in one transaction (all or nothing)."""
        with write_txn(self.conn) as c:
            return [self._add(c, stage, None) for stage in stages]

    def _add(self, c: sqlite3.Connection, stage: Stage, activate: bool | None) -> AddResult:
        content = stage_to_json(stage)
        content.pop("lifecycle", None)
        target = lifecycle_name(stage.lifecycle)
        if activate is True:
            target = "Active"
        row = c.execute("SELECT lifecycle FROM stages WHERE id = ?", (stage.id,)).fetchone()
        if row is not None:
            return AddResult(id=stage.id, lifecycle=row[0], created=False)
        sig = stage.signature
        c.execute(
            "INSERT INTO stages (id, signature_id, name, legacy_v0_id, lifecycle, successor_id,"
            " content, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                stage.id,
                stage.signature_id or stage.computed_signature_id(),
                stage.name,
                legacy_v0_id(sig.input, sig.output, sig.effects, sig.implementation_hash),
                "Draft" if target == "Active" else target,
                stage.successor_id,
                json.dumps(content, ensure_ascii=False, separators=(",", ":")),
                time.time(),
            ),
        )
        supersedes: list[str] = []
        if target == "Active":
            supersedes = self._activate(c, stage.id)
        return AddResult(id=stage.id, lifecycle=target, created=True, supersedes=supersedes)

    def _activate(self, c: sqlite3.Connection, stage_id: str) -> list[str]:
        sig = c.execute("SELECT signature_id FROM stages WHERE id = ?", (stage_id,)).fetchone()[0]
        previous = [
            r[0]
            for r in c.execute(
                "SELECT id FROM stages WHERE signature_id = ? AND lifecycle = 'Active' AND id != ?",
                (sig, stage_id),
            )
        ]
        for old in previous:
            c.execute(
                "UPDATE stages SET lifecycle = 'Deprecated', successor_id = ? WHERE id = ?",
                (stage_id, old),
            )
        c.execute("UPDATE stages SET lifecycle = 'Active', successor_id = NULL WHERE id = ?", (stage_id,))
        return previous

    def transition(self, stage_id: str, to: LifecycleName, *, successor_id: str | None = None) -> list[str]:
        """Move a stage along an allowed lifecycle edge; returns stages it deprecated."""
        with write_txn(self.conn) as c:
            row = c.execute("SELECT lifecycle FROM stages WHERE id = ?", (stage_id,)).fetchone()
            if row is None:
                raise NoetherError("stage_not_found", f"no stage with id {stage_id}", path=stage_id)
            current: LifecycleName = row[0]
            if to not in ALLOWED_TRANSITIONS[current]:
                allowed = ", ".join(ALLOWED_TRANSITIONS[current]) or "none"
                raise NoetherError(
                    "invalid_transition",
                    f"cannot move a {current} stage to {to} (allowed from {current}: {allowed})",
                    path=stage_id,
                    exit_code=1,
                )
            if to == "Active":
                return self._activate(c, stage_id)
            if to == "Deprecated":
                if not successor_id:
                    raise NoetherError("invalid_transition", "deprecating needs a successor stage", path=stage_id)
                if successor_id == stage_id:
                    raise NoetherError("invalid_transition", "a stage cannot succeed itself", path=stage_id)
                if c.execute("SELECT 1 FROM stages WHERE id = ?", (successor_id,)).fetchone() is None:
                    raise NoetherError(
                        "stage_not_found", f"successor {successor_id} is not in the store", path=successor_id
                    )
            c.execute(
                "UPDATE stages SET lifecycle = ?, successor_id = ? WHERE id = ?",
                (to, successor_id if to == "Deprecated" else None, stage_id),
            )
            return []

    # ---------------------------------------------------------- interop

    def export(self) -> dict[str, Any]:
        """Upstream's ``store.json`` shape: ``{"stages": [Stage…]}``."""
        return {"stages": [stage_to_json(s) for s in self.all()]}


def _lifecycle_json(name: str, successor: str | None) -> Any:
    if name == "Deprecated":
        return {"Deprecated": {"successor_id": successor}}
    return name


def _ambiguous(ref: str, what: str, found: list[Stage]) -> NoetherError:
    listing = ", ".join(f"{s.id[:12]} {s.name or s.description!r} [{s.state}]" for s in found[:10])
    more = f" and {len(found) - 10} more" if len(found) > 10 else ""
    return NoetherError(
        "ambiguous_reference",
        f"{ref!r} matches {len(found)} stages by {what}: {listing}{more}",
        path=ref,
        hint="use a longer prefix or the full id",
        details={"candidates": [s.id for s in found]},
    )


def lifecycle_from_json(value: Any) -> Lifecycle:
    lc: Lifecycle = msgspec.convert(value, Lifecycle)
    return lc
