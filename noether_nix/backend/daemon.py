"""The daemon backend: each call is its endpoint's request to a live daemon."""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec

from noether_nix.backend import Backend, OnEvent, OnProgress
from noether_nix.client import Client
from noether_nix.engine.events import Event
from noether_nix.errors import NoetherError
from noether_nix.service import endpoints as ep


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
                if raw.get("event") == "run_finished":
                    return raw
                with contextlib.suppress(msgspec.ValidationError):  # an event kind this client does not know
                    on_event(msgspec.convert(raw, Event))
        except OSError as e:
            raise NoetherError("daemon_unreachable", f"lost the daemon during the run: {e}", path=self.client.path,
                               exit_code=3) from None
        raise NoetherError("daemon_error", "the daemon closed the stream without the run's result",
                           path=self.client.path, exit_code=3)
