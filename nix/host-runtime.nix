# Offline runtime: a host interpreter and its shared-library closure,
# imported into the store and made relocatable inside Nix's build sandbox.
#
# `src` is a staging directory prepared by noether_nix/nix/runtime.py:
# bin/ (the interpreter), lib/ (every library ldd names, and the dynamic
# loader), the interpreter's own tree, tools/ (patchelf and its libraries)
# and relocate.py. Nix copies it into the store; the builder copies it to
# $out and points every ELF file's interpreter and RPATH into $out, so the
# result runs with only /nix/store visible.
#
# The Python runtime bootstraps itself (the staged loader runs the staged
# python); other runtimes are built by the Python runtime (`bootstrap`).
# `shell` (the bash runtime) is given when the runtime needs a launcher
# script: Debian's node, whose externalized builtins it opens first.
{ src, name, bootstrap ? null, shell ? null, system ? builtins.currentSystem }:
derivation ({
  inherit name system src;
  PYTHONDONTWRITEBYTECODE = "1";
} // (if shell == null then {} else {
  shell = builtins.storePath shell;
}) // (if bootstrap == null then {
  builder = "${src}/lib/ld-linux-x86-64.so.2";
  args = [ "--library-path" "${src}/lib" "${src}/bin/python3" "-S" "${src}/relocate.py" ];
  PYTHONHOME = "${src}";
} else {
  builder = "${builtins.storePath bootstrap}/bin/python3";
  # Nix starts the builder with a bare argv[0]; tell Python where it lives.
  PYTHONHOME = builtins.storePath bootstrap;
  args = [ "-S" "${src}/relocate.py" ];
}))
