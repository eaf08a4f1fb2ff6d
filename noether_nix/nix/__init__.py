"""Nix: hermetic runtimes and per-stage programs (issue 4).

Nix builds each stage's program once; the sandbox then executes that store
path directly. Nix never runs inside a sandbox.
"""
