"""Text stages (upstream module ``text``).

``text_hash`` declares NonDeterministic (sic, upstream), so it runs in a
sandbox: ``sandboxed/text_hash.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from noether_nix.stdlib._patterns import compile_user
from noether_nix.stdlib._shapes import (
    Impl,
    StageFailure,
    field_list,
    field_text,
    need_record,
    need_text,
    output_room,
    registrar,
    show,
    text_of,
    time_left,
)

if TYPE_CHECKING:
    import regex

IMPLS: dict[str, Impl] = {}
stage = registrar(IMPLS)

# Rust's str::trim strips Unicode White_Space; Python's str.strip() also
# strips U+001C..U+001F, which are not White_Space.
_WHITE_SPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


#: Stages that are exactly one ``str`` method on a text input: on a chunk of texts (input
#: checked to be text, a chunk at a time) the fast path maps that method itself, at C
#: speed, instead of calling the stage once a value (~2.5× the time).
ON_TEXT: dict[str, Callable[[str], Any]] = {"text_upper": str.upper, "text_lower": str.lower}


@stage("text_upper")
def text_upper(value: Any) -> Any:
    if type(value) is str:  # the hot path: one check, one call
        return value.upper()
    return need_text(value).upper()


@stage("text_lower")
def text_lower(value: Any) -> Any:
    return need_text(value).lower()


@stage("text_trim")
def text_trim(value: Any) -> Any:
    return need_text(value).strip(_WHITE_SPACE)


@stage("text_length")
def text_length(value: Any) -> Any:
    # Characters (code points), not bytes; an f64 upstream.
    return float(len(need_text(value)))


@stage("text_reverse")
def text_reverse(value: Any) -> Any:
    return need_text(value)[::-1]


@stage("text_split")
def text_split(value: Any) -> Any:
    record = need_record(value, "text", "delimiter")
    text, delimiter = field_text(record, "text"), field_text(record, "delimiter")
    if delimiter == "":
        # Rust's split("") yields "" before and after every character.
        return ["", *text, ""] if text else ["", ""]
    return text.split(delimiter)


@stage("text_join")
def text_join(value: Any) -> Any:
    record = need_record(value, "items", "delimiter")
    items = field_list(record, "items")
    size = 0
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise StageFailure(f"item {i} of field 'items' must be text, got {show(item)}")
        size += len(item)
    delimiter = field_text(record, "delimiter")
    # Ten thousand empty items joined by 30 KB make 300 MB: measured before it is built.
    output_room(size + max(len(items) - 1, 0) * len(delimiter) + 2, "the joined text")
    return delimiter.join(items)


@stage("text_contains")
def text_contains(value: Any) -> Any:
    record = need_record(value, "text", "substring")
    return field_text(record, "substring") in field_text(record, "text")


@stage("text_replace")
def text_replace(value: Any) -> Any:
    record = need_record(value, "text", "from", "to")
    text, old, new = field_text(record, "text"), field_text(record, "from"), field_text(record, "to")
    # An empty needle matches nowhere (upstream), not between every character.
    if not old:
        return text
    if len(new) > len(old):  # the output grows by this much at each occurrence: measured first
        output_room(len(text) + text.count(old) * (len(new) - len(old)) + 2, "the replaced text")
    return text.replace(old, new)


_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)


@stage("text_template")
def text_template(value: Any) -> Any:
    record = need_record(value, "template", "variables")
    template = field_text(record, "template")
    variables = record["variables"]
    if not isinstance(variables, dict):
        raise StageFailure(f"field 'variables' must be a map of text, got {show(variables)}")

    texts: dict[str, str] = {}
    size = len(template) + 2

    def fill(m: re.Match[str]) -> str:
        # One pass: a substituted value is never itself expanded. Unknown
        # placeholders stay as written.
        nonlocal size
        name = m.group(1)
        if name not in variables:
            return m.group(0)
        value = texts.get(name)
        if value is None:
            value = texts[name] = text_of(variables[name])
        # A thousand placeholders of a 1 MB value make 1 GB: counted as it is built.
        size += len(value) - len(m.group(0))
        output_room(size, "the filled template")
        return value

    return _PLACEHOLDER.sub(fill, template)


# ------------------------------------------------------------------- regexes


def _translate(pattern: str) -> str:
    """Rust regex syntax → Python ``re`` where the two disagree on meaning.

    * ``$`` (without the m flag) is end of text in Rust; in Python it also
      matches before a final newline, so it becomes ``\\Z``.
    * ``\\z`` (end of text) is ``\\Z`` in Python.
    * ``(?<name>...)`` is ``(?P<name>...)`` in Python 3.11.
    """
    multiline = re.search(r"\(\?[a-zA-Z]*m", pattern) is not None
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            out.append("\\Z" if nxt == "z" and not in_class else c + nxt)
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
        elif c == "[":
            in_class = True
            # A ']' right after '[' or '[^' is a literal member.
            j = i + 1 + (pattern[i + 1 : i + 2] == "^")
            if pattern[j : j + 1] == "]":
                out.append(pattern[i : j + 1])
                i = j + 1
                continue
        elif c == "$" and not multiline:
            out.append(r"\Z")
            i += 1
            continue
        elif pattern.startswith("(?<", i) and pattern[i + 3 : i + 4] not in ("=", "!"):
            out.append("(?P<")
            i += 3
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _compile(pattern: str) -> regex.Pattern[str]:
    # The ``regex`` module (re's syntax and meaning, ``V0``) because a user's
    # pattern can backtrack for ever: it stops at the stage's time budget
    # (``TimeoutError``) and lets other threads run meanwhile (``concurrent``).
    # Compiling is bounded before it starts (``_patterns``).
    return compile_user(_translate(pattern), shown=pattern)


def user_search(pattern: regex.Pattern[str], text: str) -> regex.Match[str] | None:
    """``pattern.search(text)`` within the stage's time budget (``TimeoutError`` past it)."""
    return pattern.search(text, concurrent=True, timeout=time_left())


def _regex(record: dict[str, Any]) -> regex.Pattern[str]:
    return _compile(field_text(record, "pattern"))


@stage("regex_match")
def regex_match(value: Any) -> Any:
    record = need_record(value, "text", "pattern")
    text = field_text(record, "text")
    m = user_search(_regex(record), text)
    if m is None:
        return {"full_match": None, "groups": [], "matched": False}
    # A group that took no part in the match is "" (the output type is
    # List<Text>; upstream puts null there).
    return {"full_match": m.group(0), "groups": [g or "" for g in m.groups()], "matched": True}


# $$, ${name}, $name (longest run of [_0-9A-Za-z]) as the regex crate expands them.
_REPLACEMENT_REF = re.compile(r"\$(?:(\$)|\{([^}]*)\}|([_0-9A-Za-z]+))")


def _expand(template: str, m: regex.Match[str]) -> str:
    def ref(r: re.Match[str]) -> str:
        if r.group(1):
            return "$"
        name = r.group(2) if r.group(2) is not None else r.group(3)
        try:
            group = m.group(int(name) if name.isdigit() else name)
        except IndexError:
            group = None  # a group that does not exist expands to nothing
        return group or ""

    return _REPLACEMENT_REF.sub(ref, template)



@stage("regex_replace")
def regex_replace(value: Any) -> Any:
    record = need_record(value, "text", "pattern", "replacement")
    text, replacement = field_text(record, "text"), field_text(record, "replacement")
    pattern = _regex(record)
    # What is not matched is kept (at most the text); what is put in is counted as it is made:
    # an empty match at each of a million characters, each replaced by a kilobyte, is a gigabyte.
    size = len(text) + 2
    literal = "$" not in replacement

    def put(m: regex.Match[str]) -> str:
        nonlocal size
        out = replacement if literal else _expand(replacement, m)
        size += len(out)
        output_room(size, "the replaced text")
        return out

    return pattern.sub(put, text, concurrent=True, timeout=time_left())
