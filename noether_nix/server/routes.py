"""Requests to handlers, by the endpoint table (``service.endpoints``).

Each request is matched to its endpoint, checked for write trust, its
parameters decoded (path, query string or JSON body, as the endpoint's
Struct), and its handler called with the peer's context. The answer is the
ACLI envelope with a measured ``duration_ms``; a run is streamed instead.
Errors keep their code and carry the CLI's exit code; no request can raise
past this module.
"""

from __future__ import annotations

import inspect
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec
import trio

from noether_nix.engine.offload import INLINE_MAX_BYTES, maybe_off_loop
from noether_nix.errors import NoetherError, http_status
from noether_nix.logs import get_logger
from noether_nix.model.values import MAX_VALUE_DEPTH
from noether_nix.server.http import HttpConnection, SendState
from noether_nix.server.protocol import Request, envelope
from noether_nix.server.runs import RunHandle
from noether_nix.server.stream import StreamedRun
from noether_nix.service import endpoints as ep
from noether_nix.service.context import Context, Peer
from noether_nix.service.endpoints import Run
from noether_nix.store.remote import remote_source

if TYPE_CHECKING:
    from noether_nix.server.daemon import Daemon

log = get_logger("noether.daemon")


class Router:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def context(self, peer: Peer) -> Context:
        d = self.daemon
        return Context(peer, make_engine=lambda: d.engine, store=d.engine.store,
                       allow_unsandboxed=d.config.allow_unsandboxed_runs, daemon=d)

    async def respond(self, http: HttpConnection, req: Request, peer: Peer) -> bool:
        """Answer one request; False when the connection cannot carry another."""
        started = time.monotonic()
        target = urlsplit(req.target)
        command = f"{req.method} {target.path}"
        log.info("request", method=req.method, target=req.target, peer_uid=peer.uid)

        async def fail(e: NoetherError) -> None:
            if e.code == "forbidden":
                self.daemon.counters["forbidden"] += 1
            error = {**e.to_dict(), "exit_code": e.exit_code}  # what the CLI exits with when it prints it
            await http.answer(http_status(e), envelope(command, error=error, duration_ms=_ms(started)))

        try:
            endpoint, raw_path_params = ep.match(req.method, target.path)
            ctx = self.context(peer)
            if endpoint.write:
                ctx.need_writer()
            def decode() -> Any:
                body = _json_body(req) if endpoint.has_body else None
                return ep.params_from(endpoint, {k: unquote(v) for k, v in raw_path_params.items()},
                                      parse_qs(target.query, keep_blank_values=True), body)

            # Reading megabytes of JSON takes a tenth of a second: not on the event loop.
            params = await maybe_off_loop(len(req.body) <= INLINE_MAX_BYTES, decode,
                                          limiter=self.daemon.engine.thread_limiter)
            if endpoint.stream:
                assert isinstance(params, Run)
                handle = await self._admit(http, ctx, params)
                if handle is None:  # the client left while its run waited for a slot
                    return False
                streamed = StreamedRun(http, handle, fail)
                self.daemon.streams.add(streamed)
                try:
                    await streamed.serve()
                finally:
                    self.daemon.streams.discard(streamed)
                return False
            handler = endpoint.resolve()
            if inspect.iscoroutinefunction(handler):
                out = await handler(ctx, params)
            elif len(req.body) > INLINE_MAX_BYTES or remote_source() is not None:
                # Checking a large graph or importing a large store takes seconds, and with a
                # registry configured a lookup may wait on the network: off the event loop.
                out = await trio.to_thread.run_sync(handler, ctx, params, abandon_on_cancel=True,
                                                    limiter=self.daemon.engine.thread_limiter)
            else:
                out = handler(ctx, params)
            if isinstance(out, bytes):
                await http.answer(200, out, "text/plain; version=0.0.4")
            else:
                await http.answer(200, envelope(command, data=out, duration_ms=_ms(started)))
            return True
        except NoetherError as e:
            if http.state is not SendState.IDLE:
                return False
            await fail(e)
            return True
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            return False
        except RecursionError:  # values are depth-checked where they enter; this is the last line
            if http.state is not SendState.IDLE:
                return False
            await fail(NoetherError("value_too_deep", "the request nests values too deeply to process",
                                    hint=f"at most {MAX_VALUE_DEPTH} levels of arrays and objects"))
            return True
        except Exception as e:  # one bad request must never take the daemon down
            log.exception("request_failed", method=req.method, target=req.target)
            if http.state is SendState.IDLE:
                await fail(NoetherError("internal_error", f"internal error: {type(e).__name__}: {e}", exit_code=3))
            return False


    async def _admit(self, http: HttpConnection, ctx: Context, params: Run) -> RunHandle | None:
        """Submit the run; a client that goes away while its run waits for a slot gives up its place.
        With both slots free it starts at once (no wait, so nothing to watch for meanwhile)."""
        runs = self.daemon.runs
        admitted = runs.submit_now(ctx, params)
        if admitted is not None:
            return await runs.start(ctx, params, *admitted)
        handle: RunHandle | None = None
        refused: NoetherError | None = None
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                await http.wait_closed()
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            try:
                handle = await self.daemon.runs.submit(ctx, params)
            except NoetherError as e:  # raised here, not wrapped in the nursery's ExceptionGroup
                refused = e
            nursery.cancel_scope.cancel()
        if refused is not None:
            raise refused
        return handle


def _json_body(req: Request) -> Any:
    try:
        return msgspec.json.decode(req.body or b"{}")
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise NoetherError("invalid_json", f"request body is not JSON: {e}", path="body") from None
    except RecursionError:  # msgspec's reader stops where Python's stack would
        raise NoetherError("invalid_json", "request body is nested too deeply to read", path="body",
                           hint=f"values may nest at most {MAX_VALUE_DEPTH} levels of arrays and objects") from None


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
