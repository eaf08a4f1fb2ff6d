"""``noether daemon``: its lifecycle.

The daemon binds (or is handed, by systemd) its Unix socket, authorises
every connection by the kernel's peer credentials, serves each connection
with ``Router`` and owns the runs (``RunManager``, in its nursery). It
warms up stage programs in the background, pings systemd's watchdog from
the event loop, and on SIGTERM/SIGINT stops taking runs, lets those in
flight finish for the grace period, then cancels them and waits for their
sandboxes to be gone.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import signal
import socket
import stat
import struct
import time
from collections import Counter
from typing import Any

import trio

from noether_nix.engine.engine import Engine
from noether_nix.errors import NoetherError
from noether_nix.logs import get_logger, setup
from noether_nix.nix.warmup import warmup
from noether_nix.paths import default_socket
from noether_nix.sandbox.cgroups import sweep_empty
from noether_nix.sandbox.delegation import claim_v2
from noether_nix.server import systemd
from noether_nix.server.http import HttpConnection
from noether_nix.server.preflight import refuse_if_unusable
from noether_nix.server.protocol import ProtocolError, envelope
from noether_nix.server.routes import Router
from noether_nix.server.runs import RunManager
from noether_nix.server.stream import StreamedRun
from noether_nix.service.context import Peer
from noether_nix.settings import Settings

log = get_logger("noether.daemon")
#: How long stopping waits, once the grace period is over, for cancelled runs to end
#: and their clients to get their last line: the unit's TimeoutStopSec is grace + this + margin.
STOP_AFTER_CANCEL_S = 6.0


def _group_ids(names: list[str]) -> set[int]:
    out = set()
    for i, name in enumerate(names):
        try:
            out.add(grp.getgrnam(name).gr_gid)
        except KeyError:
            raise NoetherError("invalid_config", f"no group named {name!r}", path=f"allowed_groups[{i}]") from None
    return out


def peer_credentials(sock: Any) -> tuple[int, int, int]:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def bind_socket(path: str, mode: int) -> socket.socket:
    """Bind the socket file, refusing to steal one a live daemon is serving."""
    if os.path.exists(path):
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            raise NoetherError("socket_path_taken", "the socket path exists and is not a socket", path=path)
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale socket from a dead daemon
        else:
            raise NoetherError("daemon_running", "another daemon is already serving this socket", path=path)
        finally:
            probe.close()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, mode)
    sock.listen(128)
    return sock


class Daemon:
    def __init__(self, config: Settings, engine: Engine | None = None) -> None:
        self.config = config
        self.engine = engine or Engine(config.engine)
        self.engine.keep_warm = True  # warm sandboxes outlive runs (serve_warm expires them)
        me = os.getuid()
        self.allowed = set(config.allowed_uids if config.allowed_uids is not None else {me, 0})
        self.writers = set(config.write_uids) if config.write_uids is not None else self.allowed
        self.allowed_gids = set(config.allowed_gids) | _group_ids(config.allowed_groups)
        self.counters: Counter[str] = Counter({k: 0 for k in (
            "requests", "runs_started", "runs_ok", "runs_failed", "runs_cancelled", "runs_refused", "forbidden",
            "bad_requests", "connection_errors", "too_many_connections")})
        self.runs = RunManager(max_runs=config.max_runs, max_queued=config.max_queued_runs,
                               max_runs_per_peer=config.max_runs_per_peer,
                               max_queued_per_peer=config.max_queued_runs_per_peer,
                               send_timeout_s=config.send_timeout_s, counters=self.counters)
        self.router = Router(self)
        self.streams: set[StreamedRun] = set()
        self.connections = trio.CapacityLimiter(config.max_connections)
        self.connections_by_peer: Counter[int] = Counter()
        self.started = time.time()
        self.warmup: dict[str, Any] = {"state": "pending"}
        self.host_cache: tuple[float, dict[str, Any]] | None = None
        self.host_lock = trio.Lock()
        self.engine.runs.mark_interrupted()
        # A daemon killed with -9 leaves its runs' (empty) cgroups behind.
        swept = sweep_empty()
        if swept:
            log.info("stale_cgroups_removed", count=swept)

    # ---------------------------------------------------------------- lifecycle

    async def serve(self, listeners: list[socket.socket], *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        trio_listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in listeners]
        async with trio.open_nursery() as nursery:
            self.runs.nursery = nursery
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                # Connections are served in a nursery of their own: stopping
                # closes them without touching the runs in the outer one.
                async with trio.open_nursery() as front:
                    nursery.start_soon(self._on_signals, signals, front.cancel_scope, nursery.cancel_scope)
                    for listener in trio_listeners:
                        front.start_soon(trio.serve_listeners, self.handle, [listener])
                    nursery.start_soon(self._warmup)
                    nursery.start_soon(self.engine.serve_warm)  # idle warm sandboxes expire; all close at the end
                    systemd.notify("READY=1\nSTATUS=serving")
                    interval = systemd.watchdog_interval()
                    if interval is not None:
                        nursery.start_soon(self._watchdog, interval)
                    log.info("daemon_ready", pid=os.getpid())
                    task_status.started()

    async def _on_signals(self, signals: Any, front: trio.CancelScope, everything: trio.CancelScope) -> None:
        async for _ in signals:
            self.runs.stopping = True
            systemd.notify("STOPPING=1\nSTATUS=stopping: letting runs finish")
            log.info("daemon_stopping", runs=len(self.runs.runs), grace_s=self.config.grace_s)
            with trio.move_on_after(self.config.grace_s):
                await self.runs.wait_all()
            # Runs still going are cancelled; each ends only once its sandboxes are gone
            # (a cancelled sandbox is drained within seconds).
            self.runs.cancel_all()
            with trio.move_on_after(STOP_AFTER_CANCEL_S):
                await self.runs.wait_all()
            # Their clients get the last lines (a cancelled run's result) before connections close.
            with trio.move_on_after(STOP_AFTER_CANCEL_S):
                for streamed in list(self.streams):
                    await streamed.closed.wait()
            front.cancel()
            everything.cancel()
            return

    async def _watchdog(self, interval: float) -> None:
        """Ping systemd's watchdog from the event loop: a stuck loop stops the pings."""
        while True:
            systemd.notify("WATCHDOG=1")
            await trio.sleep(interval)

    async def _warmup(self) -> None:
        """Build the programs of all Active stages in the background, bounded."""
        active = [s for s in self.engine.store.all() if s.state == "Active"]
        self.warmup = {"state": "running", "total": 0, "built": 0, "cached": 0, "failed": []}

        def progress(p: dict[str, Any]) -> None:
            self.warmup = {"state": "running", **p}

        try:
            result = await warmup(active, self.engine.programs, progress=progress)
        except Exception as e:  # warmup is an optimisation; runs build on first use
            log.warning("warmup_failed", error=str(e))
            self.warmup = {"state": "failed", "error": str(e)}
            return
        self.warmup = {"state": "done", **result}
        log.info("warmup_done", **{k: v for k, v in result.items() if k != "failed"}, failed=len(result["failed"]))

    # ---------------------------------------------------------------- connections

    def peer(self, uid: int, gid: int) -> Peer | None:
        if uid not in self.allowed and not self._group_allowed(uid, gid):
            return None
        return Peer(uid=uid, gid=gid, writer=uid in self.writers)

    def _group_allowed(self, uid: int, gid: int) -> bool:
        """The peer's primary group, or one of its supplementary groups in the
        user database (which the socket file's group permission admits too)."""
        if gid in self.allowed_gids:
            return True
        if not self.allowed_gids:
            return False
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            return False
        return not self.allowed_gids.isdisjoint(os.getgrouplist(name, gid))

    async def handle(self, stream: trio.SocketStream) -> None:
        """Serve one connection. Nothing that happens here may end the daemon."""
        try:
            async with self.connections:
                await self._serve_connection(stream)
        except Exception:
            self.counters["connection_errors"] += 1
            log.exception("connection_failed")
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        try:
            _pid, uid, gid = peer_credentials(stream.socket)
        except OSError:
            return
        http = HttpConnection(stream, max_body=self.config.max_body_bytes,
                              header_timeout_s=self.config.header_timeout_s,
                              send_timeout_s=self.config.send_timeout_s)
        peer = self.peer(uid, gid)
        if peer is None:
            # Refused after its request line and headers only, with a short
            # timeout: a disallowed peer cannot hold connection slots for long.
            self.counters["forbidden"] += 1
            log.warning("forbidden", peer_uid=uid, peer_gid=gid)
            await self._refuse(http, 403, "forbidden", f"uid {uid} may not use this daemon")
            return
        if self.connections_by_peer[uid] >= self.config.max_connections_per_peer:
            self.counters["too_many_connections"] += 1
            await self._refuse(http, 429, "too_many_connections", f"uid {uid} already has "
                               f"{self.connections_by_peer[uid]} connections open (at most "
                               f"{self.config.max_connections_per_peer} per peer)")
            return
        self.connections_by_peer[uid] += 1
        try:
            while True:
                try:
                    req = await http.read_request()
                except ProtocolError as e:
                    self.counters["bad_requests"] += 1
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
                        await http.answer(e.status, envelope("http", error={"code": e.code, "message": e.message,
                                                                              "exit_code": 1}))
                    return
                if req is None:
                    return
                self.counters["requests"] += 1
                if not await self.router.respond(http, req, peer) or not http.next_cycle():
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            return
        finally:
            self.connections_by_peer[uid] -= 1
            if not self.connections_by_peer[uid]:
                del self.connections_by_peer[uid]

    async def _refuse(self, http: HttpConnection, status: int, code: str, message: str) -> None:
        with contextlib.suppress(Exception):
            req = await http.read_request(timeout_s=1.0, head_only=True)
            if req is not None:
                await http.answer(status, envelope(f"{req.method} {req.target}",
                                                   error={"code": code, "message": message, "exit_code": 1}))


def run_daemon(config: Settings) -> int:
    setup(config.log_level)
    _take_host(require_limits=not config.sandbox.allow_without_limits, isolation=config.engine.isolation)
    listeners = systemd.listen_fds()
    path = None
    if not listeners:
        path = config.socket or default_socket()
        listeners = [bind_socket(path, config.socket_mode)]
    if config.registry.url:  # stages the store lacks resolve from the registry (verified, cached)
        from noether_nix.registry.client import RegistryClient, RegistrySource
        from noether_nix.store.remote import set_remote_source

        set_remote_source(RegistrySource(RegistryClient(config.registry.url, config.registry.api_key,
                                                        timeout=config.registry.timeout_s)))
    daemon = Daemon(config)
    try:
        trio.run(daemon.serve, listeners)
    finally:
        if path and os.path.exists(path):
            with contextlib.suppress(OSError):
                os.unlink(path)
    return 0


def _take_host(*, require_limits: bool, isolation: str) -> None:
    """Move into the delegated cgroup's leaf (v2), then refuse to start on a
    host whose Nix store, sandbox or limits are unusable (``server/preflight.py``)."""
    delegated = claim_v2()
    if delegated is not None:
        log.info("cgroup_delegated", cgroup=str(delegated))
    try:
        refuse_if_unusable(require_limits=require_limits, isolation=isolation)
    except NoetherError as e:
        systemd.notify(f"STATUS={e}")
        raise
