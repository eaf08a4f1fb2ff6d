"""One run streamed to the client that asked for it.

``StreamedRun`` reads the run's events from its channel and writes them as
NDJSON lines, the run's ``run_finished`` last. Its states say what the
client has seen: nothing yet (a run refused before it started still gets
an ordinary error answer), the stream, the whole stream, or nothing more
(the client went away or stopped reading).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import msgspec
import trio

from noether_nix.engine.events import RunFinished
from noether_nix.engine.offload import maybe_off_loop, small
from noether_nix.errors import NoetherError
from noether_nix.server.http import PASS_THROUGH_BYTES, HttpConnection
from noether_nix.server.protocol import json_line
from noether_nix.server.runs import Refused, RunHandle


def _line(item: Any) -> bytes:
    return json_line(msgspec.to_builtins(item))


class StreamState(enum.Enum):
    WAITING = "waiting"  # nothing sent yet
    STREAMING = "streaming"  # the 200 head and some events went out
    FINISHED = "finished"  # the whole answer went out
    GONE = "gone"  # the client left or stopped reading


class StreamedRun:
    def __init__(self, http: HttpConnection, handle: RunHandle,
                 send_error: Callable[[NoetherError], Any]) -> None:
        self.http = http
        self.handle = handle
        self.send_error = send_error  # answers a run refused before its first event
        self.state = StreamState.WAITING
        self.closed = trio.Event()

    async def serve(self) -> StreamState:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_client, nursery.cancel_scope)
                try:
                    await self._pump()
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            if self.state is not StreamState.FINISHED:
                self.state = StreamState.GONE
                self.handle.reader_gone()
            self.closed.set()
        return self.state

    async def _watch_client(self, scope: trio.CancelScope) -> None:
        # Any byte or EOF from the client during a stream means it is gone.
        await self.http.wait_closed()
        self.state = StreamState.GONE
        scope.cancel()

    async def _pump(self) -> None:
        """Events out as they come; those already waiting in the channel go out together (one
        send, one wake-up of the client, instead of one per event)."""
        try:
            async for item in self.handle.receiver:
                batch = [item]
                while not isinstance(batch[-1], (Refused, RunFinished)):
                    try:
                        batch.append(self.handle.receiver.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                if isinstance(batch[0], Refused):
                    if self.state is StreamState.WAITING:
                        await self.send_error(batch[0].error)
                        self.state = StreamState.FINISHED
                    return
                refused = isinstance(batch[-1], Refused)  # after events: they go out, the stream stays unended
                if refused:
                    batch.pop()
                lines = []
                for event in batch:
                    if isinstance(event, RunFinished):  # the one event that carries a value: encoded off the loop if large
                        lines.append(await maybe_off_loop(small(event.output), _line, event))
                    else:
                        lines.append(_line(event))
                last = isinstance(batch[-1], RunFinished)
                # A large last line (the run's output) is not joined with the lines before it
                # (a copy of megabytes): they go first, it goes on its own.
                tail = lines.pop() if len(lines) > 1 and len(lines[-1]) > PASS_THROUGH_BYTES else None
                data = b"".join(lines)
                if self.state is StreamState.WAITING:
                    await self.http.start(200, "application/x-ndjson", first=data, end=last and tail is None)
                    self.state = StreamState.STREAMING
                else:
                    await self.http.write(data, end=last and tail is None)
                if tail is not None:
                    await self.http.write(tail, end=last)
                if last:
                    self.state = StreamState.FINISHED
                    return
                if refused:
                    return
            if self.state is StreamState.WAITING:  # ended before its first event
                await self.send_error(NoetherError("cancelled", "the run was cancelled before it started",
                                                   exit_code=3))
            elif self.state is StreamState.STREAMING:  # a run that ended without its last event
                await self.http.end()
            self.state = StreamState.FINISHED
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            self.state = StreamState.GONE
