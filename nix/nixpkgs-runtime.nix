# Pinned nixpkgs runtimes, for machines that can reach nixpkgs. `nixpkgs`
# defaults to <nixpkgs>; the flake passes its locked input instead.
{ attr, nixpkgs ? <nixpkgs> }:
(import nixpkgs { }).${attr}
