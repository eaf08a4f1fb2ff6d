""""Did you mean …?": close names for a misspelt key, type, stage or option.

Errors about a name the reader typed (an unknown field of a spec, graph node
or run options; a type kind; a stage reference) carry the closest known
names, so a typo is fixed from the message alone. Keys starting with ``_``
are comments (``"_comment"``), never unknown.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from noether_nix.errors import NoetherError

#: Spellings from upstream's own documents that name another key here.
SYNONYMS: dict[str, str] = {
    "backoff_ms": "delay_ms",  # upstream's docs/concepts.md for Retry; its code reads delay_ms
    "effect": "effects",
    "implementation_code": "implementation",
}


def edit_distance(a: str, b: str) -> int:
    """Insertions, deletions, substitutions and swaps of two neighbours that turn ``a`` into ``b``."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cost = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cost = min(cost, prev2[j - 2] + 1)
            cur.append(cost)
        prev2, prev = prev, cur
    return prev[-1]


def close_matches(word: str, choices: Iterable[str], *, n: int = 3) -> list[str]:
    """The known names closest to ``word``, best first (case-insensitive; none when nothing is close):
    a typo or two (a swap counts as one), or a similar spelling."""
    options = sorted(set(choices))
    if word in SYNONYMS and SYNONYMS[word] in options:
        return [SYNONYMS[word]]
    lowered = {o.lower(): o for o in options}
    w = word.lower()
    if w in lowered:
        return [lowered[w]]
    import difflib  # only on the way to an error: not every command pays for it

    typos = sorted((d, o) for o in lowered if (d := edit_distance(w, o)) <= max(1, min(2, len(w) // 4)))
    found = [o for _, o in typos]
    found += [o for o in difflib.get_close_matches(w, list(lowered), n=n, cutoff=0.7) if o not in found]
    return [lowered[f] for f in found[:n]]


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean `x`?"`` (or ``` `x` or `y` ```), or ``""`` when nothing is close."""
    found = close_matches(word, choices)
    if not found:
        return ""
    return "; did you mean " + " or ".join(f"`{f}`" for f in found[:2]) + "?"


def unknown_keys(doc: Mapping[str, Any], known: Iterable[str], *, what: str, path: str, code: str) -> None:
    """Raise ``code`` for the first key of ``doc`` not in ``known`` (``_…`` keys are comments):
    ``unknown field `effect` in stage spec; did you mean `effects`?``."""
    allowed = set(known)
    for key in doc:
        if not isinstance(key, str) or key.startswith("_") or key in allowed:
            continue
        raise NoetherError(code, f"unknown field `{key}` in {what}{did_you_mean(key, allowed)}", path=path or None,
                           hint=f"{what} fields: {', '.join(sorted(allowed))} (a key starting with _ is a comment)")
