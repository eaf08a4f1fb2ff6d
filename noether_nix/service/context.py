"""Who asks, and what they may use: the context every command handler gets.

The embedded CLI builds one for the user at the terminal (trusted with
their own store); the daemon builds one per request from the peer's
credentials and shares its long-lived engine.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from noether_nix.errors import NoetherError

if TYPE_CHECKING:  # the engine is heavy; commands that only read the store never build one
    from noether_nix.engine.engine import Engine
    from noether_nix.engine.options import RunOptions
    from noether_nix.sandbox.identity import RunAs
    from noether_nix.store.runs import RunStore
    from noether_nix.store.stages import StageStore


class Peer(msgspec.Struct, frozen=True, kw_only=True):
    uid: int
    gid: int
    #: Trusted to change the store (the daemon's ``write_uids``; always, embedded).
    writer: bool = True

    @property
    def visible_to(self) -> int | None:
        """Peers see (and cancel) their own runs; those trusted to change the store see all."""
        return None if self.writer else self.uid

    def run_as(self) -> RunAs | None:
        """A root daemon runs a peer's sandboxes as that peer: what a stage
        writes, reads under a grant or connects to happens with the peer's
        rights. A peer that is the daemon's own user (or root) needs no switch."""
        from noether_nix.sandbox.identity import RunAs

        if os.geteuid() != 0 or self.uid in (0, os.geteuid()):
            return None
        return RunAs(uid=self.uid, gid=self.gid)


def me() -> Peer:
    return Peer(uid=os.getuid(), gid=os.getgid(), writer=True)


class Context:
    """The store and engine a handler works on, and who asked.

    ``engine`` is built on first use from ``make_engine`` (the daemon passes
    its own); ``store`` comes from the engine when one exists, else it is
    opened alone (cheaper for commands that only read stages)."""

    def __init__(self, peer: Peer, *, make_engine: Callable[[], Engine], store: StageStore | None = None,
                 allow_unsandboxed: bool = True, daemon: object = None) -> None:
        self.peer = peer
        #: The daemon answering, for the endpoints only a daemon has (its health, its runs in flight).
        self.daemon = daemon
        self._make_engine = make_engine
        self._engine: Engine | None = None
        self._store = store
        self.allow_unsandboxed = allow_unsandboxed

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = self._make_engine()
            self._store = self._engine.store
        return self._engine

    @property
    def store(self) -> StageStore:
        if self._store is None:
            if self._engine is not None:
                self._store = self._engine.store
            else:
                from noether_nix.store.stages import StageStore
                from noether_nix.store.stdlib_seed import ensure_stdlib
                from noether_nix.store.upstream import import_home_store

                self._store = StageStore()
                ensure_stdlib(self._store)
                import_home_store(self._store)
        return self._store

    @property
    def runs(self) -> RunStore:
        if self._engine is not None:
            return self._engine.runs
        from noether_nix.store.runs import RunStore

        return RunStore(self.store.conn)

    def need_writer(self, what: str = "change the store") -> None:
        if not self.peer.writer:
            raise NoetherError("forbidden", f"uid {self.peer.uid} may run graphs but not {what}")

    def gate_run(self, options: RunOptions) -> None:
        """What only trusted peers may ask of a run (or of a check, which would
        otherwise tell any peer whether a path exists)."""
        if options.isolate == "none" and not self.allow_unsandboxed:
            raise NoetherError("forbidden", "this daemon does not run stages without a sandbox (isolate: none); "
                               "its configuration would need allow_unsandboxed_runs: true")
        if self.peer.writer:
            return
        if options.isolate == "none":
            # Without a sandbox a stage runs as the daemon's user (its database, its
            # author key): more than a file grant, which already needs write trust.
            raise NoetherError("forbidden", f"uid {self.peer.uid} may run graphs but not without a sandbox "
                               "(isolate: none)")
        if options.allow_unsigned:
            # Unsigned stages are ones nobody trusted vouched for (store_add
            # makes them): only peers trusted to change the store may run them.
            raise NoetherError("forbidden", f"uid {self.peer.uid} may run graphs but not unsigned stages "
                               "(allow_unsigned)")
        if options.allow_read or options.allow_write:
            # A file grant reads or writes as the daemon's user, not the peer's:
            # only peers trusted to change the store may give one.
            raise NoetherError("forbidden", f"uid {self.peer.uid} may run graphs but not grant file access "
                               "(allow_read / allow_write)")
