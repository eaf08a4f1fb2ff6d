"""The spawner moved to ``noether_nix.proc`` (``nix/`` starts processes too, and
sits below ``sandbox/``); re-exported here for compatibility."""

from noether_nix.proc import _SPAWNER, Child, _popen, spawn

__all__ = ["_SPAWNER", "Child", "_popen", "spawn"]
