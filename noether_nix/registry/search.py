"""Search over stages: three indexes fused by reciprocal rank, like upstream.

Each stage is indexed three ways (upstream's ``index/text.rs``): its words
(name, description, aliases, tags), its type signature (input and output
types apart, so ``Text -> Number`` matches the direction too), and its
examples. A query is ranked against each index by the database's own
full-text engine (SQLite FTS5 / PostgreSQL ``tsvector``), optionally also by
embedding similarity, and the ranked lists are fused with reciprocal-rank
fusion, weighted like upstream's three indexes (description 0.5,
signature 0.3, examples 0.2).

Everything here is pure: texts in, query strings and scores out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence

import msgspec

from noether_nix.model.stage import Stage
from noether_nix.model.types import display

#: The fusion's k: a list's first place is worth 1/(k+1).
RRF_K = 60
WEIGHTS = {"text": 0.5, "signature": 0.3, "examples": 0.2}
#: How many results each index contributes to the fusion.
PER_INDEX = 100
#: An embedding ranking keeps the stages at least this similar, relative to its best.
EMBEDDING_FLOOR = 0.5
MAX_QUERY_TERMS = 16
MAX_QUERY_CHARS = 512
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_ARROW = re.compile(r"->|→|=>")
_LABEL = re.compile(r"[^\W\d][\w]*\s*:")


class IndexTexts(msgspec.Struct, frozen=True):
    """What a stage is indexed by."""

    text: str
    sig_in: str
    sig_out: str
    examples: str

    @property
    def signature(self) -> str:
        return f"{self.sig_in} -> {self.sig_out}"


def index_texts(stage: Stage) -> IndexTexts:
    words = [(stage.name or "").replace("_", " "), stage.description]
    if stage.aliases:
        words.append("Aliases: " + ", ".join(stage.aliases))
    if stage.tags:
        words.append("Tags: " + ", ".join(stage.tags))
    examples = "\n".join(
        f"{json.dumps(ex.input, ensure_ascii=False)} => {json.dumps(ex.output, ensure_ascii=False)}"
        for ex in stage.examples
    )
    return IndexTexts(
        text="\n".join(w for w in words if w),
        sig_in=" ".join(sig_words(display(stage.input))),
        sig_out=" ".join(sig_words(display(stage.output))),
        examples=examples[:20_000],
    )


def words(text: str) -> list[str]:
    """Every word of ``text``, lower-cased (``List<Text>`` is ``list``, ``text``)."""
    return _WORD.findall(text.lower())


def sig_words(text: str) -> list[str]:
    """The words of a type, without record field labels (``Record { text: Text }`` is ``record text``)."""
    return words(_LABEL.sub(" ", text))


def terms(text: str) -> list[str]:
    """The query's words: lower-case letters and digits only (nothing a query syntax could use)."""
    out: list[str] = []
    for w in _WORD.findall(text[:MAX_QUERY_CHARS].lower()):
        if w not in out:
            out.append(w)
    return out[:MAX_QUERY_TERMS]


class Query(msgspec.Struct, frozen=True):
    """A parsed query: all its words, and for ``A -> B`` the words of each side.

    A query with an arrow asks for a type signature: only the signature
    index ranks it (``Text -> Number`` is not a question about the word "text")."""

    words: list[str]
    sig_in: list[str]
    sig_out: list[str]
    signature_only: bool = False

    @property
    def empty(self) -> bool:
        return not self.words


def parse_query(q: str) -> Query:
    q = q[:MAX_QUERY_CHARS]
    parts = _ARROW.split(q, maxsplit=1)
    if len(parts) == 2:
        left, right = sig_words(parts[0])[:MAX_QUERY_TERMS], sig_words(parts[1])[:MAX_QUERY_TERMS]
        return Query(words=terms(q), sig_in=left, sig_out=right, signature_only=True)
    words = terms(q)
    return Query(words=words, sig_in=words, sig_out=words)


def fts5_match(column: str | Sequence[str], words: Iterable[str]) -> str | None:
    """An FTS5 MATCH expression: any of ``words`` (as prefixes) in ``column``."""
    quoted = [f'"{w}"*' for w in words]
    if not quoted:
        return None
    cols = column if isinstance(column, str) else " ".join(column)
    return f"{{{cols}}} : ({' OR '.join(quoted)})"


def tsquery(words: Iterable[str]) -> str | None:
    """A PostgreSQL ``to_tsquery`` text: any of ``words`` (as prefixes)."""
    quoted = [f"{w}:*" for w in words]
    return " | ".join(quoted) if quoted else None


def rerank_signature(q: Query, candidates: Sequence[tuple[str, str, str]]) -> list[str]:
    """Order (id, input words, output words) candidates by how closely each side
    matches the query's: an identical side counts most, then shared words;
    ties keep the full-text engine's order."""

    def side(want: list[str], have: list[str]) -> float:
        if not want:
            return 0.0
        if want == have:
            return 3.0
        a, b = set(want), set(have)
        return len(a & b) / len(a | b)

    scored = [(-(side(q.sig_in, i.split()) + side(q.sig_out, o.split())), n, sid)
              for n, (sid, i, o) in enumerate(candidates)]
    return [sid for _, _, sid in sorted(scored)]


def fuse(rankings: Iterable[tuple[str, Sequence[str]]], k: int = RRF_K) -> list[tuple[str, float, dict[str, int]]]:
    """Weighted reciprocal-rank fusion of (index name, ranked ids) lists.

    Returns (id, score, {index: 1-based rank}) best first; ties by id."""
    scores: dict[str, float] = {}
    ranks: dict[str, dict[str, int]] = {}
    for name, ids in rankings:
        weight = WEIGHTS.get(name.split(":")[0], 0.0)
        for i, sid in enumerate(ids):
            scores[sid] = scores.get(sid, 0.0) + weight / (k + i + 1)
            ranks.setdefault(sid, {})[name] = i + 1
    ordered = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    return [(sid, score, ranks[sid]) for sid, score in ordered]


def result_row(stage: Stage, score: float, ranks: dict[str, int]) -> dict[str, object]:
    row: dict[str, object] = {
        "id": stage.id,
        "name": stage.name,
        "description": stage.description,
        "signature": f"{display(stage.input)} → {display(stage.output)}",
        "lifecycle": stage.state.lower(),
        "score": round(score * 1000, 3),
        "ranks": ranks,
    }
    if stage.tags:
        row["tags"] = stage.tags
    return row
