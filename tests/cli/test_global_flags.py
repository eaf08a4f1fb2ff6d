"""Global flags are exact: an abbreviation is a usage error, never a traceback or another flag."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from noether_nix.cli.main import main


@pytest.mark.parametrize("argv", [["--sock", "/x", "runs"], ["--local", "runs", "--jso"], ["--loc", "runs"]])
def test_an_abbreviated_flag_is_a_usage_error(argv: list[str]) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["--json", *argv])
    assert code == 2
    doc = json.loads(out.getvalue())
    assert doc["ok"] is False and doc["error"]["code"] == "usage"
