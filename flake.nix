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
                            "--set" "NOETHER_RUNTIME_SOURCE" "nixpkgs"
                            # Runtimes come from the same locked nixpkgs as the package.
                            "--set" "NOETHER_NIXPKGS" "${nixpkgs}" ];
        doCheck = false;
        # The systemd units from systemd/, pointing at this package's noether.
        postInstall = ''
          for unit in noether.service noether.socket noether-run@.service noether-run@.timer; do
            install -Dm644 systemd/$unit $out/lib/systemd/system/$unit
            substituteInPlace $out/lib/systemd/system/$unit --replace "/usr/bin/env noether" "$out/bin/noether"
          done
          install -Dm644 systemd/noether.sysusers.conf $out/lib/sysusers.d/noether.conf
          install -Dm644 systemd/noether.tmpfiles.conf $out/lib/tmpfiles.d/noether.conf
        '';
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

      # The daemon as a NixOS service. The unit files are the ones in systemd/
      # (installed by the package with ExecStart pointing into the store), so
      # Debian and NixOS run the same units; the module only enables them and
      # supplies the account, the PATH and /etc/noether/daemon.json.
      nixosModules.default = { config, lib, pkgs, ... }:
        let cfg = config.services.noether; in {
          options.services.noether = {
            enable = lib.mkEnableOption "the noether-nix daemon (socket-activated)";
            package = lib.mkOption {
              type = lib.types.package;
              default = self.packages.${pkgs.system}.noether;
              description = "The noether-nix package.";
            };
            settings = lib.mkOption {
              type = lib.types.attrs;
              default = { };
              description = "Laid over the default /etc/noether/daemon.json (systemd/daemon.json documents every key).";
            };
          };
          config = lib.mkIf cfg.enable {
            environment.systemPackages = [ cfg.package ];
            # The same daemon.json `noether service install` writes (systemd/daemon.json: every
            # key at its default, documented), with the settings laid over it.
            environment.etc."noether/daemon.json".text =
              let defaults = builtins.fromJSON (builtins.readFile ./systemd/daemon.json); in
              builtins.toJSON (defaults // cfg.settings
                // { engine = defaults.engine // (cfg.settings.engine or { }); });
            environment.etc."noether/sandboxes/default.json".source = ./sandboxes/default.json;
            systemd.packages = [ cfg.package ];
            # The tmpfiles snippet from systemd/ (state and /etc/noether directories).
            systemd.tmpfiles.packages = [ cfg.package ];
            systemd.sockets.noether.wantedBy = [ "sockets.target" ];
            systemd.services.noether = {
              wantedBy = [ "multi-user.target" ];
              path = [ pkgs.bubblewrap config.nix.package ];
              # On NixOS the store belongs to nix-daemon; builds go through it.
              environment = { NIX_REMOTE = "daemon"; NOETHER_RUNTIME_SOURCE = "nixpkgs"; };
            };
            users.users = {
              noether = { isSystemUser = true; group = "noether"; home = "/var/lib/noether"; };
            } // builtins.listToAttrs (builtins.genList (i: {
              # As systemd/noether.sysusers.conf: the dedicated users root-initiated sandboxes run as
              # ("sandbox_uids" in sandboxes/default.json: base 80000, count 64).
              name = "noether-sbx-${toString i}";
              value = { isSystemUser = true; uid = 80000 + i; group = "noether-sbx"; description = "noether-nix sandbox ${toString i}"; };
            }) 64);
            users.groups.noether = { };
            users.groups.noether-sbx = { gid = 80000; };
            # As systemd/noether.sysusers.conf: members may use the socket (SocketGroup, allowed_groups).
            users.groups.noether-users = { };
            nix.settings.allowed-users = [ "noether" ];
          };
        };
    };
}
