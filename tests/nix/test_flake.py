"""flake.nix parses, and its outputs evaluate against a local nixpkgs stand-in.

nixpkgs is unreachable here, so nothing is built; on a real machine:
`nix run .#noether -- version` and `nix build .#noether`.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STANDIN = Path(__file__).resolve().parent / "standin" / "nixpkgs.nix"


def nix_eval(expr: str) -> object:
    out = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_flake_parses() -> None:
    out = subprocess.run(["nix-instantiate", "--parse", str(ROOT / "flake.nix")], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr


def outputs() -> str:
    return (f"(let flake = import {ROOT}/flake.nix; "
            f"self = flake.outputs {{ self = self // {{ outPath = {ROOT}; }}; nixpkgs = import {STANDIN}; }}; "
            "in self)")


def test_outputs_evaluate_against_a_standin() -> None:
    names = nix_eval(f"builtins.attrNames {outputs()}")
    assert names == ["apps", "checks", "devShells", "nixosModules", "packages"]
    pkg = nix_eval(f"{outputs()}.packages.x86_64-linux.default.name")
    assert pkg == "noether-nix"
    app = nix_eval(f"{outputs()}.apps.x86_64-linux.default.type")
    assert app == "app"
    deps = nix_eval(f"map (p: p.name) {outputs()}.packages.x86_64-linux.noether.propagatedBuildInputs")
    assert "python3-pyseccomp" in deps and "python3-trio" in deps
