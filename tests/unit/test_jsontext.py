"""The lean client's JSON decoder accepts exactly what msgspec's does (the daemon's and the engine's)."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from noether_nix.jsontext import JSONTextError, decode

CORPUS = [
    b"NaN", b"-Infinity", b"Infinity", b"[1e400]", b"[-1e400]", b"1.5e308", b"-0", b"1E5", b"0.1",
    b'"\\ud800"', b'"\\ud83d\\ude00"', b'{"\\udc00": 1}', b'["\\uDBFF"]', b'"\\\\ud800"',
    b"123456789012345678901234567890", b"-123456789012345678901234567890", b"1" * 5000,
    b'{"a": 1, "a": 2}', b"[" * 3000 + b"]" * 3000, b"\xff", b'"\xed\xa0\x80"', b'["\xc3\xa9"]',
    b"\xef\xbb\xbf1", b"", b"  ", b" 1 ", b"1 2", b'"\x01"', b"[1,]", b'{"a":1,}', b"01", b"tru", b'"\\/"',
    b'{"graph": {"root": {"op": "Stage", "id": "x"}}, "input": [1, 2.5, null, true, "s"]}',
]


def msgspec_says(raw: bytes) -> tuple[str, object]:
    try:
        return "ok", msgspec.json.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return "error", None


def ours(raw: bytes | str) -> tuple[str, object]:
    try:
        return "ok", decode(raw)
    except JSONTextError:
        return "error", None


@pytest.mark.parametrize("raw", CORPUS, ids=range(len(CORPUS)))
def test_the_same_documents_pass_with_the_same_values(raw: bytes) -> None:
    assert ours(raw) == msgspec_says(raw)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=40), st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass"))))
def test_random_text_is_judged_the_same(raw: bytes) -> None:
    assert ours(raw)[0] == msgspec_says(raw)[0]


def test_an_argument_with_undecodable_bytes_is_not_json() -> None:
    # sys.argv carries bytes that are not UTF-8 as lone surrogates (surrogateescape)
    assert ours(b'"caf\xe9"'.decode("utf-8", "surrogateescape")) == ("error", None)
