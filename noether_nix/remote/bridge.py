"""grpc.aio on one asyncio thread, awaited from trio.

gRPC's Python stubs are blocking or asyncio; noether is trio. Every call of
a client goes to one asyncio event loop running in its own thread (which
owns the channel), and trio awaits the outcome: one HTTP/2 connection
multiplexes every call, a long Execute stream holds no OS thread, and a
trio cancellation cancels the gRPC call (the asyncio task is cancelled,
which resets the stream). The alternative, blocking stubs in
``trio.to_thread``, would hold one thread per in-flight action for its whole
run (minutes) and queue behind trio's thread limiter. See docs/scale-out.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

T = TypeVar("T")


class AsyncioThread:
    """An asyncio loop in a daemon thread: ``start()``, ``await run(fn, ...)``, ``stop()``."""

    def __init__(self, name: str = "noether-grpc") -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            ready.set()
            try:
                loop.run_forever()
            finally:
                pending = asyncio.all_tasks(loop)
                for t in pending:
                    t.cancel()
                with contextlib.suppress(Exception):
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                    loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=main, name=self.name, daemon=True)
        self._thread.start()
        ready.wait()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "AsyncioThread.start() first"
        return self._loop

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await fn(*args)`` on the asyncio loop; trio cancellation cancels it."""
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_f: concurrent.futures.Future[T]) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        fut = asyncio.run_coroutine_threadsafe(_call(fn, *args), self.loop)
        fut.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            fut.cancel()  # cancels the asyncio task, which cancels the gRPC call
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await done.wait()
            raise
        return fut.result()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop = None
            self._thread = None


async def _call(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    return await fn(*args)
