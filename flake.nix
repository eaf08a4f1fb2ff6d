{
  description = "noether-nix: run Noether Lagrange graphs in Nix-built bubblewrap sandboxes";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.05";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: builtins.listToAttrs (map (system: { name = system; value = f system nixpkgs.legacyPackages.${system}; }) systems);
      pythonDeps = ps: with ps; [ trio msgspec pynacl psutil structlog h11 pyseccomp ];
      noetherFor = pkgs: pkgs.python3Packages.buildPythonApplication {
        pname = "noether-nix";
        version = "0.1.0";
        format = "pyproject";
        src = self;
        nativeBuildInputs = [ pkgs.python3Packages.hatchling ];
        propagatedBuildInputs = pythonDeps pkgs.python3Packages;
        # Runtime tools the engine calls: bwrap for the sandbox, nix-build for programs.
        makeWrapperArgs = [ "--prefix" "PATH" ":" (pkgs.lib.makeBinPath [ pkgs.bubblewrap pkgs.nix pkgs.patchelf ])
                            "--set" "NOETHER_RUNTIME_SOURCE" "nixpkgs" ];
        doCheck = false;
      };
    in {
      packages = forAll (system: pkgs: rec {
        noether = noetherFor pkgs;
        default = noether;
      });

      apps = forAll (system: pkgs: rec {
        noether = { type = "app"; program = "${self.packages.${system}.noether}/bin/noether"; };
        default = noether;
      });

      devShells = forAll (system: pkgs: {
        default = pkgs.mkShell {
          packages = [ (pkgs.python3.withPackages (ps: pythonDeps ps ++ (with ps; [ pytest pytest-trio hypothesis ]))) ]
            ++ [ pkgs.bubblewrap pkgs.nix pkgs.patchelf pkgs.ruff pkgs.mypy ];
        };
      });

      checks = forAll (system: pkgs: {
        package = self.packages.${system}.noether;
      });

      # The service runs the daemon; it ships with the daemon (issue 7). Until
      # then the module installs the CLI and the sandbox profile.
      nixosModules.default = { config, lib, pkgs, ... }:
        let cfg = config.services.noether; in {
          options.services.noether.enable = lib.mkEnableOption "noether-nix";
          config = lib.mkIf cfg.enable {
            environment.systemPackages = [ self.packages.${pkgs.system}.noether ];
            environment.etc."noether/sandboxes/default.json".source = ./sandboxes/default.json;
          };
        };
    };
}
