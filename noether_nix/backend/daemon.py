"""The daemon backend: each call is its endpoint's request to a live daemon."""

from __future__ import annotations

from typing import Any

import msgspec

from noether_nix.backend import Backend, OnEvent, OnProgress
from noether_nix.client import Client
from noether_nix.engine.events import Event
from noether_nix.errors import NoetherError
from noether_nix.service import endpoints as ep


def event_of(raw: Any) -> Event | None:
    """A decoded NDJSON line as the event it is; None for a kind this client does not know."""
    if not isinstance(raw, dict):
        raise NoetherError("daemon_error", f"the daemon sent an event that is not an object: {str(raw)[:80]!r}",
                           exit_code=3)
    try:
        event: Event = msgspec.convert(raw, Event)
    except (msgspec.ValidationError, UnicodeError):  # msgspec names a bad tag in its message (UnicodeError)
        return None
    return event


class DaemonBackend(Backend):
    mode = "daemon"

    def __init__(self, socket: str) -> None:
        self.client = Client(socket)

    def call(self, name: str, params: msgspec.Struct | None = None, *, on_progress: OnProgress | None = None) -> Any:
        endpoint = ep.BY_NAME[name]
        target, body = ep.target(endpoint, params if params is not None else endpoint.params())
        return self.client.call(endpoint.method, target, body, timeout=None if endpoint.slow else False)

    def run(self, params: ep.Run, on_event: OnEvent) -> dict[str, Any]:
        endpoint = ep.BY_NAME["run"]
        target, body = ep.target(endpoint, params)
        try:
            for raw in self.client.stream(endpoint.method, target, body, timeout=None):
                event = event_of(raw)
                if isinstance(raw, dict) and raw.get("event") == "run_finished":
                    return raw
                if event is not None:
                    on_event(event)
        except OSError as e:
            raise NoetherError("daemon_unreachable", f"lost the daemon during the run: {e}", path=self.client.path,
                               exit_code=3) from None
        raise NoetherError("daemon_error", "the daemon closed the stream without the run's result",
                           path=self.client.path, exit_code=3)
