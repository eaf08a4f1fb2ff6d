"""The user-regex size guard (``stdlib._patterns``), fuzzed: it reads pattern text by
hand, so every construct it misreads is a way past it. A pattern is either refused
with a ``StageFailure`` (what a stage reports) or compiles within bounded CPU time
and memory; nothing else (a crash, gigabytes, seconds of the daemon's CPU)."""

from __future__ import annotations

import time

import psutil
from hypothesis import example, given, settings
from hypothesis import strategies as st

from noether_nix.stdlib._patterns import MAX_WEIGHT, compile_user, weight
from noether_nix.stdlib._shapes import StageFailure
from tests.fuzz.strategies import budget

#: What one accepted pattern may cost to compile (the daemon does it on its own thread).
MAX_CPU_S = 2.0
#: (``a{100000}``, the heaviest pattern allowed, takes about 30 MB.)
MAX_RSS = 128 * 1024 * 1024

counts = st.sampled_from(["", "1", "2", "10", "99", "300", "1000", "4096", "99999", "100001"])
repeat = st.one_of(
    st.sampled_from(["*", "+", "?", "*?", "+?", "??", "*+", "++"]),
    st.builds(lambda m, n, style, tail: (f"{{{m}}}" if style == 0 else f"{{{m},{n}}}" if style == 1
                                         else f"{{ {m} , {n} }}") + tail,
              counts, counts, st.integers(0, 2), st.sampled_from(["", "?", "+"])),
)
atoms = st.one_of(
    st.sampled_from(["a", "ß", ".", "\\d", "\\w", "\\X", "\\{", "\\}", "\\[", "\\]", "\\(", "\\)", "\\#", "\\ ",
                     "\\Q", "\\E", "\\p{L}", "\\N{LATIN SMALL LETTER A}", "\\x{41}", "\\u0041", "{", "}", "]", " ",
                     "#", "\n", "(?#c{1000})", "(?1)", "(?R)", "(?&n)", "(?P=n)", "\\g<n>", "\\1", "[[:alpha:]]",
                     "[]{1000}]", "[^]{1000}]", "[\\]{1000}]", "[{1000}]", "[a-z]", "[[a]--[b]]", "[\\x00-\\U0010ffff]"]),
    st.builds(lambda n: "[" + "".join(chr(0x4E00 + 2 * i) for i in range(n)) + "]", st.integers(1, 600)),
)
flag_letters = st.sampled_from(["", "x", "i", "f", "s", "m", "V0", "V1", "xV0", "V0x", "V1x", "xV1", "ix", "-x", "x-i"])


def group(inner: str, kind: str) -> str:
    if kind.startswith("flags:"):
        return f"(?{kind[6:]}:{inner})"
    return {"plain": "(", "nc": "(?:", "named": "(?P<n>", "atomic": "(?>", "look": "(?=", "cond": "(?(1)",
            "reset": "(?|"}[kind] + inner + {"cond": "|b)", "reset": "|c)"}.get(kind, ")")


patterns = st.recursive(
    atoms,
    lambda inner: st.one_of(
        st.builds(lambda a, r: a + r, inner, repeat),
        # A repetition after a blank or a comment: in verbose mode it repeats what came before.
        st.builds(lambda a, sep, r: a + sep + r, inner, st.sampled_from([" ", "\n", "#c\n", "(?#c)", "\\ "]),
                  repeat),
        st.builds(lambda a, b, sep: a + sep + b, inner, inner, st.sampled_from(["", "|", " ", "\n", "#x\n"])),
        st.builds(group, inner, st.one_of(st.sampled_from(["plain", "nc", "named", "atomic", "look", "cond", "reset"]),
                                          flag_letters.map(lambda f: "flags:" + f))),
    ),
    max_leaves=8,
)
full = st.builds(lambda flags, p: (f"(?{flags})" if flags else "") + p, flag_letters, patterns)


def compiled_within_bounds(pattern: str, verbose: bool) -> None:
    process = psutil.Process()
    before = process.memory_info().rss
    started = time.process_time()
    try:
        compiled = compile_user(pattern, verbose=verbose)
    except StageFailure as e:
        assert str(e)
        return
    spent = time.process_time() - started
    grew = process.memory_info().rss - before
    assert spent <= MAX_CPU_S, (pattern, spent, weight(pattern, verbose=verbose))
    assert grew <= MAX_RSS, (pattern, grew, weight(pattern, verbose=verbose))
    del compiled


@settings(max_examples=budget(400))
@given(full, st.booleans())
@example("[" + "".join(chr(0x4E00 + 2 * i) for i in range(600)) + "]{99999}", False)  # a set weighed 1
@example("(?xV0)(?:a{1000}) {1000}", False)  # a version flag hid the verbose flag from the guard
@example("(?V1)a", False)  # a ValueError, not a StageFailure
def test_a_pattern_is_refused_or_compiles_within_bounds(pattern: str, verbose: bool) -> None:
    compiled_within_bounds(pattern, verbose)


def test_the_guard_is_not_vacuous() -> None:
    """The bounds are reachable: a pattern just under the weight limit compiles, one past it is refused."""
    assert weight(f"a{{{MAX_WEIGHT}}}") == MAX_WEIGHT
    compiled_within_bounds(f"a{{{MAX_WEIGHT}}}", False)
    try:
        compile_user("(?:a{1000}){1000}")
    except StageFailure:
        pass
    else:
        raise AssertionError("a pattern a million items long was compiled")
