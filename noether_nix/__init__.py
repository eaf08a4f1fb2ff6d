"""noether-nix: a sandboxed, Nix-backed execution daemon for Noether Lagrange graphs."""

__version__ = "0.1.0"
