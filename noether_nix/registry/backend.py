"""The registry's storage: one interface, SQLite or PostgreSQL underneath.

Stages live in the stage store's own table, written by the stage store's
own code (``StageStore`` over a SQLite connection, or over ``PgConnection``
for PostgreSQL): adding a stage is ``service.stages.store_stage``, the path
``noether stage add`` takes, with its content addressing and auto-
deprecation. What the registry adds beside it are tables of its own: tags
and effect kinds (for filters and /health), the three search indexes, and
embedding vectors when a provider is configured.

Every method is synchronous and the caller serialises them (one connection
per backend); the server calls them from a worker thread.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any, cast

import msgspec

from noether_nix.errors import NoetherError
from noether_nix.model.signing import SignatureStatus, verify_id
from noether_nix.model.stage import Stage, stage_to_json
from noether_nix.registry import search
from noether_nix.registry.embeddings import EmbeddingProvider, Vector, cosine
from noether_nix.service import stages as svc
from noether_nix.store.db import connect, write_txn
from noether_nix.store.stages import StageStore

SCHEMA_VERSION = "1"
LIFECYCLES = {"draft": "Draft", "active": "Active", "deprecated": "Deprecated", "tombstone": "Tombstone"}

COMMON_SCHEMA = """
CREATE TABLE IF NOT EXISTS registry_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS registry_indexed (stage_id TEXT PRIMARY KEY, indexed_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS registry_tags (stage_id TEXT NOT NULL, tag TEXT NOT NULL, PRIMARY KEY (stage_id, tag));
CREATE INDEX IF NOT EXISTS registry_tags_tag ON registry_tags(tag);
CREATE TABLE IF NOT EXISTS registry_effects (stage_id TEXT NOT NULL, effect TEXT NOT NULL,
    PRIMARY KEY (stage_id, effect));
CREATE TABLE IF NOT EXISTS registry_vectors (stage_id TEXT NOT NULL, kind TEXT NOT NULL, model TEXT NOT NULL,
    vector TEXT NOT NULL, PRIMARY KEY (stage_id, kind, model));
"""


class Submission(msgspec.Struct, kw_only=True):
    """What ``POST /stages`` answers: upstream's ``{id, is_new}`` and more."""

    id: str
    is_new: bool
    lifecycle: str
    supersedes: list[str] = msgspec.field(default_factory=list)
    warnings: list[str] = msgspec.field(default_factory=list)


class _NoPrograms:
    """The registry builds no Nix programs: there is nothing to release on Tombstone."""

    def release(self, stage_id: str) -> None:
        return None


def validation_problems(stage: Stage) -> list[str]:
    """Why a submitted stage is refused: ``verify_stage``'s findings, except that
    an unsigned stage is accepted (as a Draft, with a warning)."""
    problems = [] if stage.description.strip() else ["description: must not be empty"]
    report = svc.verify_stage(stage)
    problems += [p for p in report["details"]["problems"] if p != "signature: unsigned"]
    return problems


class Backend:
    """Shared logic; subclasses supply the connection and the full-text index."""

    kind = "abstract"

    def __init__(self, conn: Any, *, allow_unsigned_active: bool = False,
                 embeddings: EmbeddingProvider | None = None) -> None:
        self.conn = conn
        self.store = StageStore(conn=conn)
        self.allow_unsigned_active = allow_unsigned_active
        self.embeddings = embeddings
        self._vectors: dict[str, dict[str, Vector]] = {}  # stage id → kind → vector (this process's copy)
        self.migrate()

    # ------------------------------------------------------------ schema

    def migrate(self) -> None:
        self.conn.executescript(COMMON_SCHEMA + self.index_schema())
        with write_txn(self.conn) as c:
            self.migrate_store(c)
            row = c.execute("SELECT value FROM registry_meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                c.execute("INSERT INTO registry_meta (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,))

    def index_schema(self) -> str:
        raise NotImplementedError

    def migrate_store(self, c: Any) -> None:
        """Backend-specific changes to the stage table itself."""

    def close(self) -> None:
        self.conn.close()

    # ------------------------------------------------------------ reading

    def _stages(self, sql: str, args: tuple[Any, ...]) -> list[Stage]:
        return [self.store._row_to_stage(r) for r in self.conn.execute(sql, args).fetchall()]

    def list_page(self, lifecycle: str, tag: str | None, limit: int, offset: int) -> tuple[list[Stage], int]:
        where, args = ["1 = 1"], []
        if lifecycle != "all":
            where.append("lifecycle = ?")
            args.append(LIFECYCLES[lifecycle])
        if tag is not None:
            where.append("id IN (SELECT stage_id FROM registry_tags WHERE tag = ?)")
            args.append(tag)
        cond = " AND ".join(where)
        total = self.conn.execute(f"SELECT count(*) FROM stages WHERE {cond}", tuple(args)).fetchone()[0]
        page = self._stages(f"SELECT content, lifecycle, successor_id FROM stages WHERE {cond} "
                            "ORDER BY id LIMIT ? OFFSET ?", (*args, limit, offset))
        return page, int(total)

    def get(self, ref: str) -> Stage:
        """A full id, a unique id prefix, a signature id, a legacy id or a name."""
        return self.store.get(ref) or self.store.resolve(ref)

    def stats(self) -> dict[str, Any]:
        by_lifecycle = {k: int(v) for k, v in self.store.count().items()}
        rows = self.conn.execute("SELECT effect, count(*) FROM registry_effects GROUP BY effect").fetchall()
        return {"total_stages": sum(by_lifecycle.values()), "by_lifecycle": by_lifecycle,
                "by_effect": {k: int(v) for k, v in rows}}

    # ------------------------------------------------------------ writing

    def add(self, stage: Stage, *, draft: bool = False) -> Submission:
        """Validate and store a parsed stage the way ``stage add`` does."""
        problems = validation_problems(stage)
        if problems:
            raise NoetherError("validation_failed", "; ".join(problems), path=stage.id,
                               details={"problems": problems})
        warnings: list[str] = []
        signed = verify_id(stage.id, stage.ed25519_signature, stage.signer_public_key) is SignatureStatus.VALID
        existing = self.store.get(stage.id)
        if signed and existing is not None and verify_id(
                existing.id, existing.ed25519_signature, existing.signer_public_key) is SignatureStatus.UNSIGNED:
            return self._adopt_signature(existing, stage, draft=draft)
        if not signed:
            if not self.allow_unsigned_active:
                warnings.append("the stage is unsigned: stored as a Draft, and this registry does not "
                                "activate unsigned stages")
                stage = msgspec.structs.replace(stage, lifecycle="Draft")
                draft = True
            else:
                warnings.append("the stage is unsigned")
        out = svc.store_stage(self.store, stage, draft=draft)
        self.index(stage)
        return Submission(id=stage.id, is_new="note" not in out, lifecycle=out["lifecycle"],
                          supersedes=out.get("supersedes", []), warnings=warnings)

    def _adopt_signature(self, existing: Stage, stage: Stage, *, draft: bool) -> Submission:
        """The signed upload of a stage stored unsigned (a spec file posted with curl):
        the stored copy takes the signature (not part of the id, so the content
        address holds), and a Draft kept back for want of one is activated."""
        content = stage_to_json(stage)
        content.pop("lifecycle", None)
        with write_txn(self.conn) as c:
            c.execute("UPDATE stages SET content = ? WHERE id = ?",
                      (json.dumps(content, ensure_ascii=False, separators=(",", ":")), stage.id))
        out: dict[str, Any] = {"lifecycle": existing.state.lower()}
        if existing.state == "Draft" and not draft:
            out = svc.move_stage(self.store, stage.id, "Active", registry=cast(Any, _NoPrograms()))
        return Submission(id=stage.id, is_new=False, lifecycle=out["lifecycle"], supersedes=out.get("supersedes", []),
                          warnings=["the stored copy was unsigned: it now carries this signature"])

    def change_lifecycle(self, ref: str, to: str, successor: str | None) -> dict[str, Any]:
        if to.lower() not in ("active", "deprecated", "tombstone"):
            raise NoetherError("validation_failed", f"cannot move a stage to {to!r} (use active, deprecated "
                               "or tombstone)", path="lifecycle")
        stage = self.get(ref)
        if to.lower() == "active" and not self.allow_unsigned_active and verify_id(
                stage.id, stage.ed25519_signature, stage.signer_public_key) is not SignatureStatus.VALID:
            raise NoetherError("validation_failed", f"stage {stage.label()} has no valid signature and this "
                               "registry does not activate unsigned stages", path=stage.id,
                               hint="publish it signed (`noether stage add` signs with your author key)")
        if to.lower() == "deprecated" and not successor:
            raise NoetherError("validation_failed", "deprecating needs a successor_id", path="successor_id")
        return svc.move_stage(self.store, stage.id, to, successor=successor,
                                    registry=cast(Any, _NoPrograms()))

    def delete(self, ref: str) -> dict[str, Any]:
        stage = self.get(ref)
        with write_txn(self.conn) as c:
            heirs = [r[0] for r in c.execute("SELECT id FROM stages WHERE successor_id = ?", (stage.id,))]
            if heirs:
                raise NoetherError("conflict", f"stage {stage.label()} is the successor of {len(heirs)} "
                                   f"deprecated stage(s) ({', '.join(h[:12] for h in heirs[:5])}); tombstone "
                                   "it instead", path=stage.id)
            c.execute("DELETE FROM stages WHERE id = ?", (stage.id,))
            self._unindex(c, stage.id)
        self._vectors.pop(stage.id, None)
        return {"id": stage.id, "deleted": True}

    # ------------------------------------------------------------ indexing

    def _unindex(self, c: Any, stage_id: str) -> None:
        for table in ("registry_tags", "registry_effects", "registry_vectors", "registry_indexed"):
            c.execute(f"DELETE FROM {table} WHERE stage_id = ?", (stage_id,))
        self.delete_text(c, stage_id)

    def index(self, stage: Stage) -> None:
        texts = search.index_texts(stage)
        with write_txn(self.conn) as c:
            if c.execute("SELECT 1 FROM registry_indexed WHERE stage_id = ?", (stage.id,)).fetchone():
                return
            self._unindex(c, stage.id)  # leftovers of an interrupted index
            for tag in sorted(set(stage.tags)):
                c.execute("INSERT INTO registry_tags (stage_id, tag) VALUES (?, ?)", (stage.id, tag))
            for kind in sorted({k.value for k in stage.effects.kinds()}):
                c.execute("INSERT INTO registry_effects (stage_id, effect) VALUES (?, ?)", (stage.id, kind))
            self.insert_text(c, stage.id, texts)
            c.execute("INSERT INTO registry_indexed (stage_id, indexed_at) VALUES (?, ?)", (stage.id, time.time()))

    def reconcile(self) -> int:
        """Index the stages that are not (an add interrupted between store and index,
        a database filled by another tool); returns how many."""
        missing = self._stages("SELECT content, lifecycle, successor_id FROM stages WHERE id NOT IN "
                               "(SELECT stage_id FROM registry_indexed) ORDER BY id", ())
        for stage in missing:
            self.index(stage)
        return len(missing)

    def insert_text(self, c: Any, stage_id: str, texts: search.IndexTexts) -> None:
        raise NotImplementedError

    def delete_text(self, c: Any, stage_id: str) -> None:
        raise NotImplementedError

    def text_rankings(self, q: search.Query, lifecycle: str) -> list[tuple[str, list[str]]]:
        raise NotImplementedError

    # ------------------------------------------------------------ search

    def search(self, query: str, *, lifecycle: str = "active", limit: int = 20,
               query_vector: Vector | NoetherError | None = None) -> dict[str, Any]:
        """``query_vector``: the query's embedding (or why there is none), computed by
        the caller away from the database; without it, embedded here."""
        q = search.parse_query(query)
        if q.empty:
            return {"query": query, "results": [], "count": 0, "mode": "lexical"}
        rankings = self.text_rankings(q, lifecycle)
        mode, notes = "lexical", []
        if self.embeddings is not None:
            try:
                if query_vector is None:
                    self.embed_missing()
                    query_vector = self.embeddings.embed_query(query[:search.MAX_QUERY_CHARS])
                if isinstance(query_vector, NoetherError):
                    raise query_vector
                rankings += self.vector_rankings(query_vector, lifecycle)
                mode = "hybrid"
            except NoetherError as e:
                notes.append(f"embedding search skipped: {e}")
        fused = search.fuse(rankings)[:limit]
        found = {s.id: s for s in self._by_ids([sid for sid, _, _ in fused])}
        results = [search.result_row(found[sid], score, ranks) for sid, score, ranks in fused if sid in found]
        out: dict[str, Any] = {"query": query, "results": results, "count": len(results), "mode": mode}
        if notes:
            out["warnings"] = notes
        return out

    def _by_ids(self, ids: list[str]) -> list[Stage]:
        if not ids:
            return []
        marks = ", ".join("?" for _ in ids)
        return self._stages(f"SELECT content, lifecycle, successor_id FROM stages WHERE id IN ({marks})", tuple(ids))

    def _lifecycle_cond(self, lifecycle: str, column: str = "lifecycle") -> tuple[str, tuple[Any, ...]]:
        if lifecycle == "all":
            return f"{column} != 'Tombstone'", ()
        return f"{column} = ?", (LIFECYCLES[lifecycle],)

    def _vector_texts(self, stage: Stage) -> dict[str, str]:
        t = search.index_texts(stage)
        return {"text": t.text, "signature": t.signature, "examples": t.examples or t.text}

    def missing_vectors(self, ids: list[str] | None = None) -> tuple[list[str], list[str]]:
        """(stage ids, their texts three by three) of the stages with no vectors for this model."""
        assert self.embeddings is not None
        sql = ("SELECT content, lifecycle, successor_id FROM stages WHERE lifecycle != 'Tombstone' AND id NOT IN "
               "(SELECT stage_id FROM registry_vectors WHERE model = ?)")
        stages = [s for s in self._stages(sql, (self.embeddings.model,)) if ids is None or s.id in ids]
        texts = [self._vector_texts(s) for s in stages]
        return [s.id for s in stages], [t[k] for t in texts for k in ("text", "signature", "examples")]

    def embed_missing(self, ids: list[str] | None = None) -> int:
        """Compute and store the vectors of stages that have none for this model
        (the server does the three steps apart, off its database slot)."""
        assert self.embeddings is not None
        stage_ids, flat = self.missing_vectors(ids)
        if not stage_ids:
            return 0
        return self.store_vectors(stage_ids, self.embeddings.embed(flat))

    def store_vectors(self, stage_ids: list[str], vectors: list[Vector]) -> int:
        assert self.embeddings is not None
        model = self.embeddings.model
        stages = [s for s in self._by_ids(stage_ids) if s.state != "Tombstone"]
        index = {sid: i for i, sid in enumerate(stage_ids)}
        with write_txn(self.conn) as c:
            for s in stages:
                for j, kind in enumerate(("text", "signature", "examples")):
                    c.execute("DELETE FROM registry_vectors WHERE stage_id = ? AND kind = ? AND model = ?",
                              (s.id, kind, model))
                    c.execute("INSERT INTO registry_vectors (stage_id, kind, model, vector) VALUES (?, ?, ?, ?)",
                              (s.id, kind, model, json.dumps(vectors[index[s.id] * 3 + j])))
        return len(stages)

    def vector_rankings(self, qv: Vector, lifecycle: str) -> list[tuple[str, list[str]]]:
        assert self.embeddings is not None
        cond, args = self._lifecycle_cond(lifecycle, "s.lifecycle")
        ids = [r[0] for r in self.conn.execute(f"SELECT id FROM stages s WHERE {cond}", args).fetchall()]
        need = [i for i in ids if i not in self._vectors]
        for start in range(0, len(need), 500):
            chunk = need[start:start + 500]
            marks = ", ".join("?" for _ in chunk)
            for sid, kind, vec in self.conn.execute(
                    f"SELECT stage_id, kind, vector FROM registry_vectors WHERE model = ? AND stage_id IN ({marks})",
                    (self.embeddings.model, *chunk)).fetchall():
                self._vectors.setdefault(sid, {})[kind] = json.loads(vec)
        out = []
        for kind in ("text", "signature", "examples"):
            scored = [(cosine(qv, self._vectors[i][kind]), i) for i in ids if kind in self._vectors.get(i, {})]
            scored.sort(key=lambda p: (-p[0], p[1]))
            # Only the near neighbours: a list that ranked every stage would add noise to every result.
            floor = max(0.0, scored[0][0] * search.EMBEDDING_FLOOR) if scored else 0.0
            out.append((f"{kind}:embedding", [i for c, i in scored[:search.PER_INDEX] if c > floor]))
        return out

    # ------------------------------------------------------------ bulk

    def seed(self, stages: list[Stage]) -> int:
        """Add stages not yet present (the stdlib, a stages directory); returns how many were new."""
        added = 0
        for stage in stages:
            if self.store.get(stage.id) is None:
                added += self.add(stage).is_new
        return added

    def export(self, stage: Stage) -> dict[str, Any]:
        return stage_to_json(stage)


class SqliteBackend(Backend):
    kind = "sqlite"

    def __init__(self, path: Path, **kw: Any) -> None:
        self.path = path
        super().__init__(connect(path), **kw)

    def index_schema(self) -> str:
        return """
        CREATE VIRTUAL TABLE IF NOT EXISTS registry_fts USING fts5(
            stage_id UNINDEXED, text, sig_in, sig_out, examples, tokenize = 'porter unicode61');
        """

    def insert_text(self, c: sqlite3.Connection, stage_id: str, texts: search.IndexTexts) -> None:
        c.execute("INSERT INTO registry_fts (stage_id, text, sig_in, sig_out, examples) VALUES (?, ?, ?, ?, ?)",
                  (stage_id, texts.text, texts.sig_in, texts.sig_out, texts.examples))

    def delete_text(self, c: sqlite3.Connection, stage_id: str) -> None:
        c.execute("DELETE FROM registry_fts WHERE stage_id = ?", (stage_id,))

    def text_rankings(self, q: search.Query, lifecycle: str) -> list[tuple[str, list[str]]]:
        cond, args = self._lifecycle_cond(lifecycle, "s.lifecycle")
        out = []
        matches = {
            "text": None if q.signature_only else search.fts5_match("text", q.words),
            "signature": " OR ".join(m for m in (search.fts5_match("sig_in", q.sig_in),
                                                 search.fts5_match("sig_out", q.sig_out)) if m) or None,
            "examples": None if q.signature_only else search.fts5_match("examples", q.words),
        }
        for name, match in matches.items():
            if match is None:
                continue
            rows = self.conn.execute(
                f"SELECT f.stage_id, f.sig_in, f.sig_out FROM registry_fts f JOIN stages s ON s.id = f.stage_id "
                f"WHERE registry_fts MATCH ? AND {cond} ORDER BY bm25(registry_fts), f.stage_id LIMIT ?",
                (match, *args, search.PER_INDEX)).fetchall()
            ids = search.rerank_signature(q, rows) if name == "signature" else [r[0] for r in rows]
            out.append((name, ids))
        return out


class PostgresBackend(Backend):
    kind = "postgresql"

    def __init__(self, url: str, **kw: Any) -> None:
        from noether_nix.registry.pg import PgConnection

        super().__init__(PgConnection(url), **kw)

    def index_schema(self) -> str:
        return """
        CREATE TABLE IF NOT EXISTS registry_search (
            stage_id TEXT PRIMARY KEY,
            sig_in TEXT NOT NULL,
            sig_out TEXT NOT NULL,
            text_tsv tsvector NOT NULL,
            sig_in_tsv tsvector NOT NULL,
            sig_out_tsv tsvector NOT NULL,
            examples_tsv tsvector NOT NULL);
        CREATE INDEX IF NOT EXISTS registry_search_text ON registry_search USING gin (text_tsv);
        CREATE INDEX IF NOT EXISTS registry_search_sig_in ON registry_search USING gin (sig_in_tsv);
        CREATE INDEX IF NOT EXISTS registry_search_sig_out ON registry_search USING gin (sig_out_tsv);
        CREATE INDEX IF NOT EXISTS registry_search_examples ON registry_search USING gin (examples_tsv);
        """

    def migrate_store(self, c: Any) -> None:
        # Ids compare byte-wise (prefix lookups use `id >= p AND id < p||'g'`), and
        # added_at keeps sub-second time: adjust the stage table's column types once.
        cols = dict(c.execute(
            "SELECT column_name, coalesce(collation_name, '') || ':' || data_type FROM information_schema.columns "
            "WHERE table_name = 'stages' AND table_schema = current_schema()").fetchall())
        for col in ("id", "signature_id", "legacy_v0_id", "successor_id", "name"):
            if not cols.get(col, "").startswith("C:"):
                c.execute(f'ALTER TABLE stages ALTER COLUMN {col} TYPE TEXT COLLATE "C"')
        if not cols.get("added_at", "").endswith("double precision"):
            c.execute("ALTER TABLE stages ALTER COLUMN added_at TYPE DOUBLE PRECISION")

    def insert_text(self, c: Any, stage_id: str, texts: search.IndexTexts) -> None:
        c.execute("INSERT INTO registry_search (stage_id, sig_in, sig_out, text_tsv, sig_in_tsv, sig_out_tsv, "
                  "examples_tsv) VALUES (?, ?, ?, to_tsvector('english', ?), to_tsvector('simple', ?), "
                  "to_tsvector('simple', ?), to_tsvector('simple', ?))",
                  (stage_id, texts.sig_in, texts.sig_out, texts.text, texts.sig_in, texts.sig_out,
                   _pg_words(texts.examples)))

    def delete_text(self, c: Any, stage_id: str) -> None:
        c.execute("DELETE FROM registry_search WHERE stage_id = ?", (stage_id,))

    def text_rankings(self, q: search.Query, lifecycle: str) -> list[tuple[str, list[str]]]:
        cond, args = self._lifecycle_cond(lifecycle, "s.lifecycle")
        out = []
        text_q, in_q, out_q = search.tsquery(q.words), search.tsquery(q.sig_in), search.tsquery(q.sig_out)
        specs: list[tuple[str, str, tuple[Any, ...]]] = []
        if text_q and not q.signature_only:
            specs.append(("text", "ts_rank_cd(r.text_tsv, to_tsquery('english', ?))", (text_q,)))
            specs.append(("examples", "ts_rank_cd(r.examples_tsv, to_tsquery('simple', ?))", (text_q,)))
        if in_q or out_q:
            specs.append(("signature", "ts_rank_cd(r.sig_in_tsv, to_tsquery('simple', ?)) + "
                          "ts_rank_cd(r.sig_out_tsv, to_tsquery('simple', ?))",
                          (in_q or "", out_q or "")))
        for name, rank, rank_args in specs:
            rows = self.conn.execute(
                f"SELECT stage_id, sig_in, sig_out FROM (SELECT r.stage_id, r.sig_in, r.sig_out, {rank} AS score "
                f"FROM registry_search r JOIN stages s ON s.id = r.stage_id WHERE {cond}) ranked WHERE score > 0 "
                "ORDER BY score DESC, stage_id LIMIT ?", (*rank_args, *args, search.PER_INDEX)).fetchall()
            ids = search.rerank_signature(q, rows) if name == "signature" else [r[0] for r in rows]
            out.append((name, ids))
        return out


def _pg_words(text: str) -> str:
    """Text as plain words: PostgreSQL's parser would keep ``List<Text>`` or JSON fragments whole."""
    return " ".join(search.words(text))


def memory_index(stages: list[Stage]) -> SqliteBackend:
    """An in-memory index of ``stages`` (a local store's), searched like the registry's."""
    backend = SqliteBackend(Path(":memory:"))
    for s in stages:
        # Inserted as a Draft, then given its own lifecycle: this copy must not re-run activation.
        backend.store.add(msgspec.structs.replace(s, lifecycle="Draft"), activate=False)
        backend.conn.execute("UPDATE stages SET lifecycle = ?, successor_id = ? WHERE id = ?",
                             (s.state, s.successor_id, s.id))
        backend.index(s)
    return backend
