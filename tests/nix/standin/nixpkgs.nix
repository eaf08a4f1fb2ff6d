# A minimal stand-in for the few nixpkgs attributes flake.nix uses, so its
# outputs can be evaluated offline. Derivations are plain attribute sets.
let
  drv = name: attrs: { type = "derivation"; inherit name; outPath = "/standin/${name}"; } // attrs;
  pyPkg = name: drv "python3-${name}" { };
  lib = {
    makeBinPath = ps: builtins.concatStringsSep ":" (map (p: "${p}/bin") ps);
    mkEnableOption = d: { description = d; };
    mkOption = o: o;
    types = { package = "package"; attrs = "attrs"; };
    mkIf = c: v: if c then v else { };
  };
  pkgsFor = system: rec {
    inherit system lib;
    bubblewrap = drv "bubblewrap" { };
    nix = drv "nix" { };
    patchelf = drv "patchelf" { };
    ruff = drv "ruff" { };
    mypy = drv "mypy" { };
    python3Packages = {
      buildPythonApplication = a: drv a.pname { inherit (a) propagatedBuildInputs makeWrapperArgs postInstall; };
      hatchling = pyPkg "hatchling";
      trio = pyPkg "trio"; msgspec = pyPkg "msgspec"; pynacl = pyPkg "pynacl"; psutil = pyPkg "psutil";
      structlog = pyPkg "structlog"; h11 = pyPkg "h11"; pyseccomp = pyPkg "pyseccomp";
      pytest = pyPkg "pytest"; pytest-trio = pyPkg "pytest-trio"; hypothesis = pyPkg "hypothesis";
    };
    python3 = { withPackages = f: drv "python3-env" { packages = f python3Packages; }; };
    mkShell = a: drv "shell" a;
  };
in {
  outPath = "/standin/nixpkgs";
  legacyPackages = { x86_64-linux = pkgsFor "x86_64-linux"; aarch64-linux = pkgsFor "aarch64-linux"; };
}
