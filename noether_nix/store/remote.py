"""Stages from elsewhere: the hook a remote registry plugs into resolution.

Resolution asks the local store first; when a reference is not found there
(or its Deprecated stage's successor is missing, or no local implementation
of a signature is Active), it asks the process's ``RemoteSource``, if one
is configured. The source answers with a ``StageLookup`` that layers the
local store over the stages it fetched, verified and cached: local stages
shadow remote ones. The implementation lives above (``noether_nix.registry``);
this layer only names the shape, so imports keep pointing down.
"""

from __future__ import annotations

from typing import Protocol

from noether_nix.model.stage import Stage

#: Resolution errors after which the remote source is asked.
FALLBACK_CODES = frozenset({"stage_not_found", "successor_missing", "signature_not_active"})


class StageLookup(Protocol):
    """The queries reference resolution makes (``StageStore`` has them)."""

    def get(self, stage_id: str) -> Stage | None: ...
    def by_prefix(self, prefix: str) -> list[Stage]: ...
    def by_signature(self, signature_id: str) -> list[Stage]: ...
    def by_name(self, name: str) -> list[Stage]: ...
    def by_legacy(self, ref: str) -> list[Stage]: ...


class RemoteSource(Protocol):
    #: Where the stages come from (a registry URL); errors and warnings name it.
    origin: str
    #: Whether the lifecycles it reports are this process's own (a registry
    #: resolving from its own database). Otherwise they are another party's word,
    #: and resolution follows a successor it names only when that is a drop-in.
    own_lifecycles: bool

    def lookup(self, local: StageLookup, ref: str) -> tuple[StageLookup, list[tuple[str, str]]]:
        """A lookup that also finds ``ref`` remotely, and warnings as (code, message).

        Raises ``NoetherError`` (``registry_unreachable`` …) when ``ref`` is
        neither cached nor reachable."""
        ...


_source: RemoteSource | None = None


def set_remote_source(source: RemoteSource | None) -> None:
    """Install (or with None remove) the process's remote stage source."""
    global _source
    _source = source


def remote_source() -> RemoteSource | None:
    return _source
