"""Every error code the code base can raise is declared once, in the catalogue."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from noether_nix.errors import CATALOGUE, PREFIXES, NoetherError, http_status, lookup

PACKAGE = Path(__file__).resolve().parents[2] / "noether_nix"
RAISERS = {"NoetherError", "StageError", "HigherOrderError", "_err"}


def raised_codes() -> list[tuple[str, str]]:
    """(code or f-string prefix + '*', where) for every literal code in the package."""
    found = []
    for f in PACKAGE.rglob("*.py"):
        if "sandboxed" in f.parts:  # programs that run inside the sandbox, not the engine
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", None))
            arg = None
            if name in RAISERS and node.args:
                arg = node.args[0]
            elif name == "ProtocolError" and len(node.args) > 1:
                arg = node.args[1]
            elif name == "error" and isinstance(node.func, ast.Attribute) and node.args:  # the type checker's
                arg = node.args[0]
            where = f"{f.relative_to(PACKAGE.parent)}:{node.lineno}"
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.append((arg.value, where))
            elif isinstance(arg, ast.JoinedStr) and isinstance(arg.values[0], ast.Constant):
                found.append((str(arg.values[0].value) + "*", where))
    return found


def test_every_raised_code_is_in_the_catalogue() -> None:
    codes = raised_codes()
    assert len(codes) > 150  # the scan sees the raise sites
    missing = [(c, w) for c, w in codes if (c[:-1] not in PREFIXES if c.endswith("*") else lookup(c) is None)]
    assert not missing, missing


def test_codes_decide_exit_codes_and_statuses() -> None:
    assert NoetherError("budget_exceeded", "x").exit_code == 2
    assert NoetherError("stage_not_found", "x").exit_code == 1
    assert NoetherError("signature_unsigned", "x").exit_code == 2  # a family, by prefix
    assert NoetherError("usage", "x", exit_code=130).exit_code == 130  # a caller may decide
    assert http_status(NoetherError("forbidden", "x")) == 403
    assert http_status(NoetherError("too_many_runs", "x")) == 429
    assert http_status(NoetherError("no_such_code_anywhere", "x")) == 500


@pytest.mark.parametrize("code", sorted(CATALOGUE))
def test_every_code_is_a_client_or_server_status(code: str) -> None:
    status = CATALOGUE[code].http_status
    assert 400 <= status < 600
    assert CATALOGUE[code].exit_code in (1, 2, 3, 78, 130)
