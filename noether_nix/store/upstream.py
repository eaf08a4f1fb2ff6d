"""Upstream noether's store file, ``store.json``: reading its stages, and
importing the one found in ``$NOETHER_HOME`` once.

Upstream keeps its stages in ``$NOETHER_HOME/store.json`` (``~/.noether``,
the same directory as ours). A user who comes from upstream keeps them: the
first time a store is opened in a home that has a ``store.json``, its valid
stages are imported (content-addressed, so nothing is duplicated), the ones
that cannot be read are listed with the reason, and the import is logged.
A marker remembers the file's digest, so the same file is imported once; a
changed file (upstream still in use) is imported again, adding what is new.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from noether_nix.errors import NoetherError
from noether_nix.logs import get_logger
from noether_nix.model.signing import SignatureStatus, verify_id
from noether_nix.model.stage import Stage, check_identity, stage_from_json
from noether_nix.paths import noether_home
from noether_nix.store.db import write_txn
from noether_nix.store.stages import StageStore

log = get_logger("noether.store")
_MARKER = "upstream_store_json"


def stage_from_store_entry(raw: Any, *, path: str) -> Stage:
    """One entry of a store file: a Stage JSON whose ID is its content's and whose signature,
    if it has one, verifies (an unsigned stage is kept: running it needs --allow-unsigned)."""
    stage = stage_from_json(raw, path=path)
    check_identity(stage, path=path)
    status = verify_id(stage.id, stage.ed25519_signature, stage.signer_public_key)
    if status in (SignatureStatus.BAD_SIGNATURE, SignatureStatus.MALFORMED):
        raise NoetherError(f"signature_{status.value}", f"signature {status.value}", path=path)
    return stage


def import_home_store(store: StageStore, home: Path | None = None) -> dict[str, Any] | None:
    """Import ``store.json`` from the home once (see the module); the report, or None when there
    was nothing to do."""
    path = (home or noether_home()) / "store.json"
    try:
        raw = path.read_bytes()
    except OSError:
        return None  # none there (or not ours to read): nothing to import
    digest = hashlib.sha256(raw).hexdigest()
    store.conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    row = store.conn.execute("SELECT value FROM meta WHERE key = ?", (_MARKER,)).fetchone()
    if row and row[0] == digest:
        return None
    report: dict[str, Any] = {"path": str(path), "imported": 0, "already_present": 0, "invalid": []}
    try:
        doc = json.loads(raw)
        entries = doc["stages"] if isinstance(doc, dict) else None
        if not isinstance(entries, list):
            raise ValueError('expected {"stages": [...]}')
    except (ValueError, KeyError) as e:
        report["error"] = f"not an upstream store file: {e}"
        entries = []
    stages: list[Stage] = []
    for i, entry in enumerate(entries):
        try:
            stages.append(stage_from_store_entry(entry, path=f"stages[{i}]"))
        except NoetherError as e:
            report["invalid"].append({"index": i, "error": str(e)})
    # Successors first, so a Deprecated stage never points at a missing one.
    results = store.add_many(sorted(stages, key=lambda s: s.state == "Deprecated"))
    report["imported"] = sum(r.created for r in results)
    report["already_present"] = len(results) - report["imported"]
    with write_txn(store.conn) as c:
        c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (_MARKER, digest))
    invalid = len(report["invalid"])
    message = (f"imported {report['imported']} stage(s) from {path} (upstream noether's store"
               + (f"; {report['already_present']} were already here" if report["already_present"] else "")
               + (f"; {invalid} could not be read and were left out" if invalid else "")
               + (f"; {report['error']}" if "error" in report else "")
               + "); this file is not imported again")
    log.warning("imported_upstream_store", message=message, **report)
    return report
