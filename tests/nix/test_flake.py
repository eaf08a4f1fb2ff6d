"""flake.nix parses, and its outputs evaluate against a local nixpkgs stand-in.

nixpkgs is unreachable here, so nothing is built; on a real machine:
`nix run .#noether -- version` and `nix build .#noether`.
"""

from __future__ import annotations

import json
import re
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


def test_package_ships_the_systemd_units_and_pins_runtimes() -> None:
    pkg = f"{outputs()}.packages.x86_64-linux.noether"
    post = nix_eval(f"{pkg}.postInstall")
    assert isinstance(post, str)
    units = re.search(r"for unit in ([^;]+);", post)
    assert units is not None
    for unit in units.group(1).split():
        assert (ROOT / "systemd" / unit).is_file(), unit  # every unit the package installs exists
    assert "/usr/bin/env noether" in (ROOT / "systemd" / "noether.service").read_text()  # what gets replaced
    wrapper = nix_eval(f"{pkg}.makeWrapperArgs")
    assert isinstance(wrapper, list)
    assert wrapper[wrapper.index("NOETHER_NIXPKGS") + 1] == "/standin/nixpkgs"


def test_nixos_module_enables_the_socket_activated_service() -> None:
    module = (f"({outputs()}.nixosModules.default {{ lib = (import {STANDIN}).legacyPackages.x86_64-linux.lib; "
              "pkgs = (import " f"{STANDIN}" ").legacyPackages.x86_64-linux; "
              "config = { services.noether = { enable = true; package = { outPath = \"/standin/noether\"; }; "
              "settings = { max_queued_runs = 8; }; }; nix.package = { outPath = \"/standin/nix\"; }; }; })")
    cfg = nix_eval(f"{module}.config")
    assert isinstance(cfg, dict)
    assert cfg["systemd"]["sockets"]["noether"]["wantedBy"] == ["sockets.target"]
    service = cfg["systemd"]["services"]["noether"]
    assert service["wantedBy"] == ["multi-user.target"]
    assert service["environment"]["NIX_REMOTE"] == "daemon"
    assert cfg["users"]["users"]["noether"]["isSystemUser"] is True
    daemon_json = json.loads(cfg["environment"]["etc"]["noether/daemon.json"]["text"])
    defaults = json.loads((ROOT / "systemd" / "daemon.json").read_text())
    assert daemon_json == {**defaults, "max_queued_runs": 8}  # the file `noether service install` writes, overlaid
    assert cfg["users"]["groups"]["noether-users"] == {}  # the socket's group, as in the sysusers snippet
    # The sandbox users, as in the sysusers snippet (root-initiated sandboxes run as them).
    sbx = {k: v for k, v in cfg["users"]["users"].items() if k.startswith("noether-sbx-")}
    assert len(sbx) == 64 and sbx["noether-sbx-63"]["uid"] == 80063 and sbx["noether-sbx-0"]["group"] == "noether-sbx"
    assert cfg["users"]["groups"]["noether-sbx"] == {"gid": 80000}
    assert cfg["systemd"]["tmpfiles"]["packages"] == ["/standin/noether"]
    disabled = module.replace("enable = true", "enable = false")
    assert nix_eval(f"{disabled}.config") == {}
