"""The daemon backend: each call is its endpoint's request to a live daemon.

It imports neither msgspec nor the endpoint table: requests are built from
``service.urls`` and the parameters' builtins, and a run's events become
``engine.events`` Structs only for an ``on_event`` that wants them.
"""

from __future__ import annotations

from noether_nix.backend import Backend
from noether_nix.client import Client
from noether_nix.errors import NoetherError
from noether_nix.service.urls import ROUTES, target

TYPE_CHECKING = False  # no typing import on a client's path (see errors.py)
if TYPE_CHECKING:
    from typing import Any

    from noether_nix.backend import OnEvent, OnProgress
    from noether_nix.engine.events import Event


def event_of(raw: Any) -> Event | None:
    """A decoded NDJSON line as the event it is; None for a kind this client does not know."""
    if not isinstance(raw, dict):
        raise NoetherError("daemon_error", f"the daemon sent an event that is not an object: {str(raw)[:80]!r}",
                           exit_code=3)
    import msgspec

    from noether_nix.engine.events import Event

    try:
        event: Event = msgspec.convert(raw, Event)
    except (msgspec.ValidationError, UnicodeError):  # msgspec names a bad tag in its message (UnicodeError)
        return None
    return event


class DaemonBackend(Backend):
    mode = "daemon"

    def __init__(self, socket: str) -> None:
        self.client = Client(socket)

    def call(self, name: str, params: dict[str, Any] | None = None, *,
             on_progress: OnProgress | None = None) -> Any:
        method, path, slow = ROUTES[name]
        url, body = target(method, path, params or {})
        return self.client.call(method, url, body, timeout=None if slow else False)

    def run(self, params: dict[str, Any], on_event: OnEvent) -> dict[str, Any]:
        method, path, _ = ROUTES["run"]
        url, body = target(method, path, params)
        kinds = getattr(on_event, "kinds", None)
        try:
            for raw in self.client.stream(method, url, body, timeout=None):
                if isinstance(raw, dict) and raw.get("event") == "run_finished":
                    return raw
                if kinds is not None and isinstance(raw, dict) and raw.get("event") not in kinds:
                    continue  # nobody reads it: not worth decoding as a Struct
                event = event_of(raw)
                if event is not None:
                    on_event(event)
        except OSError as e:
            raise NoetherError("daemon_unreachable", f"lost the daemon during the run: {e}", path=self.client.path,
                               exit_code=3) from None
        raise NoetherError("daemon_error", "the daemon closed the stream without the run's result",
                           path=self.client.path, exit_code=3)
