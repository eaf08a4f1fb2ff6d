"""User regular expressions, compiled within bounds.

A pattern is the caller's text, and compiling one is work in the daemon's
process that no time budget stops (the ``regex`` module's timeout covers
matching only; its compiler is Python). The module writes a counted
repetition out in full: ``a{1000000}`` compiles for half a second into
260 MB, and ``(?:a{1000}){10000}``, 18 characters, into 2 GB. So a pattern
is refused before it is compiled when it is longer than ``MAX_PATTERN``
characters or its repetitions multiply past ``MAX_WEIGHT`` (what the
compiled program would hold; Rust's regex crate, upstream's, refuses such
patterns too, past its 10 MB program size limit).

Compiled patterns are not kept by the module (``cache_pattern=False``):
its cache would hold up to 500 of them, each as large as the bounds let
it be. This module keeps the last few small ones, and now and then purges
what the module remembers about every pattern it has seen.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

from noether_nix.stdlib._shapes import StageFailure

if TYPE_CHECKING:  # the module is imported when a pattern is first compiled (~10 ms of start-up)
    import regex

#: Longest pattern compiled, in characters.
MAX_PATTERN = 32 * 1024
#: How large a pattern may be once its counted repetitions are written out
#: (``a{1000}`` weighs 1000, ``(?:ab){10}{10}`` 200).
MAX_WEIGHT = 100_000
#: Patterns this light are kept compiled (at most ``CACHED`` of them).
CACHE_WEIGHT = 1000
CACHED = 256
# The regex module remembers every pattern it compiles (its locale table), cache or not:
# it forgets them all after this many compilations.
_PURGE_EVERY = 256

# A counted repetition; blanks inside the braces are allowed (verbose mode allows them, and
# reading one where the module would see text only counts more).
_COUNTED = re.compile(r"\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")
# An inline flag group: ``(?x)`` (from here to the end of the group) or ``(?x-i:`` (scoped).
# The version flags are two characters: ``(?xV0)`` is verbose too.
_FLAGS = re.compile(r"\(\?((?:V[01]|[a-zA-Z])*)(?:-((?:V[01]|[a-zA-Z])*))?([:)])")
_lock = threading.Lock()
_cache: OrderedDict[tuple[str, int], regex.Pattern[str]] = OrderedDict()
_compiled = 0


def weight(pattern: str, limit: int = MAX_WEIGHT, *, verbose: bool = False) -> int:
    """An upper bound on the pattern's size with its counted repetitions written out
    (every atom 1, a ``[...]`` set as many as the characters between its brackets, a group
    the sum of what it holds, ``{m,n}`` multiplies by the larger bound); the count stops once it is past ``limit``. Conservative: alternatives add up.

    Verbose mode (``verbose``, or an inline ``x`` flag, which holds from where it is written
    to the end of its group) is followed: there blanks and ``#`` comments are not atoms,
    so ``(?x)(?:a{1000}) {1000}`` weighs a million, as it compiles. A ``(?#...)`` comment
    is never an atom."""
    # groups[-1]: [weight of the finished part, weight of the last atom, verbose]
    groups: list[list[int]] = [[0, 0, int(verbose)]]
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        atom = 1
        if groups[-1][2] and c in " \t\n\r\f\v":
            i += 1  # not an atom: a repetition after it repeats what came before
            continue
        if groups[-1][2] and c == "#":
            end = pattern.find("\n", i)
            i = n if end < 0 else end + 1
            continue
        if c == "\\":
            i += 2
            if pattern[i - 1:i] in ("p", "P", "N", "x", "u", "U") and pattern[i:i + 1] == "{":
                end = pattern.find("}", i)
                i = n if end < 0 else end + 1
        elif c == "[":
            start = i
            i += 1
            if pattern[i:i + 1] == "^":
                i += 1
            if pattern[i:i + 1] == "]":
                i += 1
            while i < n and pattern[i] != "]":
                i += 2 if pattern[i] == "\\" else 1
            i += 1
            # A set is compiled as its members: it weighs as many as it has characters.
            atom = max(1, min(i, n) - start - 2)
        elif pattern.startswith("(?#", i):
            end = pattern.find(")", i)
            i = n if end < 0 else end + 1
            continue
        elif c == "(":
            verbose_here = groups[-1][2]
            flags = _FLAGS.match(pattern, i)
            if flags is not None:
                on, off, kind = flags.group(1), flags.group(2) or "", flags.group(3)
                set_to = 1 if "x" in on else 0 if "x" in off else verbose_here
                if kind == ")":  # from here on, in this group
                    groups[-1][2] = set_to
                    i = flags.end()
                    continue
                verbose_here = set_to
            groups[-1][0] += groups[-1][1]
            groups[-1][1] = 0
            groups.append([0, 0, verbose_here])
            i = flags.end() if flags is not None else i + 1
            continue
        elif c == ")" and len(groups) > 1:
            inner = groups.pop()
            atom = max(inner[0] + inner[1], 1)
            i += 1
        elif c in "*+?":
            i += 1  # a loop, not written out
            continue
        elif c == "{" and (m := _COUNTED.match(pattern, i)) and (m.group(1) or m.group(2)):
            bounds = [g for g in m.groups() if g]
            times = max(int(b) if len(b) <= 9 else limit + 1 for b in bounds)
            # A repetition at the start of a group repeats something (at least one item).
            groups[-1][1] = max(groups[-1][1], 1) * max(times, 1)
            i = m.end()
            if groups[-1][1] > limit:
                return groups[-1][1]
            continue
        elif c == "|":
            i += 1
            continue
        else:
            i += 1
        groups[-1][0] += groups[-1][1]
        groups[-1][1] = atom
        if groups[-1][0] + groups[-1][1] > limit:
            return groups[-1][0] + groups[-1][1]
    while len(groups) > 1:  # unbalanced: the compiler says so; count what there is
        inner = groups.pop()
        groups[-1][1] += inner[0] + inner[1]
    return groups[0][0] + groups[0][1]


def compile_user(pattern: str, *, shown: str | None = None, verbose: bool = False) -> regex.Pattern[str]:
    """``pattern`` compiled, or ``StageFailure`` naming ``shown`` (the pattern as the user wrote it)
    when it is invalid or over the bounds."""
    import regex

    shown = pattern if shown is None else shown
    flags = regex.V0 | (regex.VERBOSE if verbose else 0)
    if len(pattern) > MAX_PATTERN:
        raise StageFailure(f"the regex is {len(pattern)} characters long; at most {MAX_PATTERN} are compiled")
    key = (pattern, flags)
    with _lock:
        found = _cache.get(key)
        if found is not None:
            _cache.move_to_end(key)
            return found
    heavy = weight(pattern, verbose=verbose)
    if heavy > MAX_WEIGHT:
        raise StageFailure(f"the regex {_preview(shown)} repeats too much: written out it would be over "
                           f"{MAX_WEIGHT} items (lower the counts in its {{m,n}})")
    try:
        compiled = regex.compile(pattern, flags=flags, cache_pattern=False)
    except (regex.error, ValueError, OverflowError) as e:  # (?V1) against the V0 flag is a ValueError
        raise StageFailure(f"invalid regex {_preview(shown)}: {e}") from None
    except RecursionError:
        raise StageFailure(f"invalid regex {_preview(shown)}: it nests too deeply") from None
    global _compiled
    with _lock:
        if heavy <= CACHE_WEIGHT and len(pattern) <= CACHE_WEIGHT:
            _cache[key] = compiled
            if len(_cache) > CACHED:
                _cache.popitem(last=False)
        _compiled += 1
        if _compiled >= _PURGE_EVERY:
            _compiled = 0
            regex.purge()
    return compiled


def _preview(pattern: str) -> str:
    return repr(pattern if len(pattern) <= 200 else pattern[:197] + "...")
