"""The one interface the CLI talks to, embedded or through the daemon.

Like Nix's ``Store`` with ``LocalStore`` and ``RemoteStore``: ``Backend``
has one method per operation (each a row of ``service.endpoints``); the
local backend calls the handler in this process, the daemon backend sends
the endpoint's request to a live daemon, which calls the same handler. A
command is written once, and prints the same thing in both modes.

Parameters travel as JSON builtins, named as the endpoint's parameter
Struct names them: the local backend converts them to that Struct (as the
daemon does a request), the daemon backend sends them — and so a client of
a live daemon imports neither msgspec nor the endpoint table
(``service.urls`` is its view of it).
"""

from __future__ import annotations

from noether_nix.errors import NoetherError

TYPE_CHECKING = False  # no typing import on a client's path (see errors.py)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    #: Receives a run's events as they happen (``engine.events`` Structs). One with a ``kinds`` attribute
    #: (a set of event tags) is given only those kinds.
    OnEvent = Callable[[Any], None]
    OnProgress = Callable[[dict[str, Any]], None]


class Backend:
    """Every operation noether offers its CLI. Subclasses implement ``call`` and ``run``."""

    #: "local" (embedded) or "daemon".
    mode = "local"

    def call(self, name: str, params: dict[str, Any] | None = None, *,
             on_progress: OnProgress | None = None) -> Any:
        raise NotImplementedError

    def run(self, params: dict[str, Any], on_event: OnEvent) -> dict[str, Any]:
        """Run a graph (``params``: ``endpoints.Run``'s fields); ``on_event`` sees each event; the result is
        its last event (as JSON builtins)."""
        raise NotImplementedError

    # ------------------------------------------------------------ one method per endpoint

    def check(self, graph: Any, input: Any, options: dict[str, Any], *, check_input: bool) -> Any:
        return self.call("check", {"graph": graph, "input": input, "check_input": check_input, "options": options})

    def runs_list(self, limit: int) -> Any:
        return self.call("runs_list", {"limit": limit})

    def run_get(self, ref: str) -> Any:
        return self.call("run_get", {"ref": ref})

    def trace_get(self, ref: str) -> Any:
        return self.call("trace_get", {"ref": ref})

    def stage_list(self, *, lifecycle: str, tags: list[str], full_ids: bool) -> Any:
        return self.call("stage_list", {"lifecycle": lifecycle, "tag": tags, "full_ids": full_ids})

    def stage_add(self, stage_json: dict[str, Any], *, draft: bool = False, build: bool = True) -> Any:
        return self.call("stage_add", {"spec": stage_json, "draft": draft, "build": build})

    def stage_get(self, ref: str) -> Any:
        return self.call("stage_get", {"ref": ref})

    def stage_lifecycle(self, ref: str, lifecycle: str, successor: str | None = None) -> Any:
        return self.call("stage_lifecycle", {"ref": ref, "lifecycle": lifecycle, "successor": successor})

    def stage_verify(self, ref: str | None) -> Any:
        return self.call("stage_verify", {"ref": ref}) if ref else self.call("verify_all")

    def stage_test(self, ref: str | None) -> Any:
        return self.call("stage_test", {"ref": ref}) if ref else self.call("test_all")

    def warmup(self, refs: list[str], on_progress: OnProgress | None = None) -> Any:
        return self.call("warmup", {"refs": refs}, on_progress=on_progress)

    def store_stats(self) -> Any:
        return self.call("store_stats")

    def store_export(self) -> Any:
        return self.call("store_export")

    def store_import(self, doc: Any, source: str) -> Any:
        return self.call("store_import", {"doc": doc, "source": source})


def select(*, local: bool = False, socket: str | None = None) -> Backend:
    """The daemon backend when a daemon should answer, else the local one.

    ``local`` (``--local``, or the settings' ``local``: ``$NOETHER_LOCAL``)
    forces embedded mode; ``socket`` (``--socket``) names a daemon that must
    answer (else ``daemon_unreachable``, never a silent fallback); otherwise
    the settings' socket (``$NOETHER_SOCKET``) or the default one is used when
    a daemon is live."""
    from noether_nix.settings_view import client_settings

    if local or client_settings()[0]:
        return _local()
    from noether_nix.client import daemon_socket_if_live

    if socket is not None:
        if daemon_socket_if_live(socket) is None:
            raise NoetherError("daemon_unreachable", "no daemon is serving this socket", path=socket,
                               hint="start one with `noether daemon --socket PATH`, or use --local")
        return _daemon(socket)
    live = daemon_socket_if_live()
    return _daemon(live) if live else _local()


def _local() -> Backend:
    from noether_nix.backend.local import LocalBackend

    return LocalBackend()


def _daemon(socket: str) -> Backend:
    from noether_nix.backend.daemon import DaemonBackend

    return DaemonBackend(socket)
