"""The embedded backend: handlers called in this process, on this user's store."""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Any

import msgspec

from noether_nix.backend import Backend
from noether_nix.deferred import trio
from noether_nix.engine.engine import Engine
from noether_nix.engine.events import Event, RunFinished
from noether_nix.errors import NoetherError
from noether_nix.service import endpoints as ep
from noether_nix.service.context import Context, me
from noether_nix.service.graph import run_graph, run_graph_without_loop

if TYPE_CHECKING:
    from noether_nix.backend import OnEvent, OnProgress


def params_of(endpoint: ep.Endpoint, params: dict[str, Any] | None) -> msgspec.Struct:
    """The endpoint's parameter Struct from its fields as builtins, checked as the daemon checks a request's."""
    try:
        return msgspec.convert(params or {}, endpoint.params)
    except msgspec.ValidationError as e:
        raise NoetherError("usage", f"invalid parameters for {endpoint.method} {endpoint.path}: {e}") from None


def _as_json(value: Any) -> Any:
    """What a daemon client would get back: the same value after a JSON round trip."""
    return msgspec.json.decode(msgspec.json.encode(value))


class LocalBackend(Backend):
    mode = "local"

    def __init__(self) -> None:
        self.ctx = Context(me(), make_engine=lambda: Engine(store=self.ctx.store))

    def call(self, name: str, params: dict[str, Any] | None = None, *,
             on_progress: OnProgress | None = None) -> Any:
        endpoint = ep.BY_NAME[name]
        if endpoint.daemon_only:
            raise NoetherError("daemon_required", f"{endpoint.method} {endpoint.path} is answered by a daemon only")
        fn = endpoint.resolve()
        kwargs = {"progress": on_progress} if on_progress is not None else {}
        out = fn(self.ctx, params_of(endpoint, params), **kwargs)
        if isinstance(out, types.CoroutineType):
            coro = out
            out = trio.run(lambda: coro)
        return _as_json(out)

    def run(self, params: dict[str, Any], on_event: OnEvent) -> dict[str, Any]:
        run_params = params_of(ep.BY_NAME["run"], params)
        assert isinstance(run_params, ep.Run)

        async def emit(ev: Event) -> None:
            on_event(ev)

        # A chain of stages runs right here (trio is not even imported); any other plan on trio.
        done = run_graph_without_loop(self.ctx, run_params, emit=emit)
        if isinstance(done, RunFinished):
            finished = done
        else:
            finished = trio.run(lambda: run_graph(self.ctx, run_params, emit=emit, prepared=done))
        result: dict[str, Any] = _as_json(finished)
        return result
