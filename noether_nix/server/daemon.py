"""``noether daemon``: the engine behind an HTTP/1.1 Unix socket, on trio.

Every connection is authorised by the kernel's peer credentials, every
wait is bounded (headers, body, idle), every run is owned by the daemon's
nursery and cancelled when its client goes away (unless detached) or when
the daemon stops after its grace period.
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
import uuid
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import h11
import msgspec
import structlog
import trio

from noether_nix.engine.config import EngineConfig
from noether_nix.engine.engine import Engine, RunOptions
from noether_nix.engine.events import Event
from noether_nix.errors import NoetherError
from noether_nix.paths import default_socket
from noether_nix.sandbox.cgroups import sweep_empty
from noether_nix.sandbox.supervisor import RunAs
from noether_nix.server import systemd
from noether_nix.server.protocol import (
    ProtocolError,
    Request,
    envelope,
    ndjson,
    request_from,
    response_head,
)

log = structlog.get_logger("noether.daemon")
T = TypeVar("T")

_STATUS = {1: 400, 2: 422, 3: 500}
_CODE_STATUS = {"stage_not_found": 404, "trace_not_found": 404, "run_not_found": 404, "not_found": 404,
                "forbidden": 403, "busy": 503, "body_too_large": 413, "invalid_json": 400, "usage": 400,
                "method_not_allowed": 405, "ambiguous_reference": 409, "invalid_transition": 409}


# Request bodies. The CLI reads client files and sends their content; the daemon never reads client paths.
class CheckBody(msgspec.Struct):
    graph: Any = None
    input: Any = None
    check_input: bool = False
    options: dict[str, Any] | None = None


class RunBody(msgspec.Struct):
    graph: Any
    input: Any = None
    options: dict[str, Any] | None = None


class StageBody(msgspec.Struct):
    spec: Any = None  # a spec or full Stage JSON; a body without "spec" is taken as the spec itself
    draft: bool = False
    build: bool = False


class LifecycleBody(msgspec.Struct):
    lifecycle: str
    successor: str | None = None


class WarmupBody(msgspec.Struct):
    refs: list[str] = msgspec.field(default_factory=list)


class ImportBody(msgspec.Struct):
    doc: Any
    source: str = "store.json"  # how errors name the document (the client's file)


class DaemonConfig(msgspec.Struct, kw_only=True):
    socket: str | None = None
    socket_mode: int = 0o660
    allowed_uids: list[int] | None = None  # default: the daemon's uid and root
    allowed_gids: list[int] = msgspec.field(default_factory=list)
    #: Groups by name, resolved at start; a peer is in one as its primary or a supplementary group.
    allowed_groups: list[str] = msgspec.field(default_factory=list)
    write_uids: list[int] | None = None  # default: same as allowed
    max_body_bytes: int = 8 * 1024 * 1024
    header_timeout_s: float = 10.0
    max_connections: int = 256
    max_runs: int = 16
    max_queued_runs: int = 64
    grace_s: float = 30.0
    send_timeout_s: float = 30.0  # a streaming client that reads nothing this long is gone
    #: Whether a client may ask for `isolate: "none"`: unconfined stages run as
    #: the daemon's user (often root), so by default the daemon refuses.
    allow_unsandboxed_runs: bool = False
    engine: EngineConfig = msgspec.field(default_factory=EngineConfig)


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
    def __init__(self, config: DaemonConfig, engine: Engine | None = None) -> None:
        self.config = config
        self.engine = engine or Engine(config.engine)
        me = os.getuid()
        self.allowed = set(config.allowed_uids if config.allowed_uids is not None else {me, 0})
        self.writers = set(config.write_uids) if config.write_uids is not None else self.allowed
        self.allowed_gids = set(config.allowed_gids) | _group_ids(config.allowed_groups)
        self.runs: dict[str, trio.CancelScope] = {}
        self.run_owners: dict[str, int] = {}  # in-flight run → the peer uid that started it
        self._host_cache: tuple[float, dict[str, Any]] | None = None
        self._host_lock = trio.Lock()
        self.run_slots = trio.Semaphore(config.max_runs)
        self.waiting = 0
        self.connections = trio.CapacityLimiter(config.max_connections)
        self.stopping = False
        self.counters = {"requests": 0, "runs_started": 0, "runs_ok": 0, "runs_failed": 0, "runs_cancelled": 0,
                         "forbidden": 0, "bad_requests": 0}
        self.started = time.time()
        self.warmup: dict[str, Any] = {"state": "pending"}
        self.engine.runs.mark_interrupted()
        # A daemon killed with -9 leaves its runs' (empty) cgroups behind.
        swept = sweep_empty()
        if swept:
            log.info("stale_cgroups_removed", count=swept)

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

    # ---------------------------------------------------------------- serving

    async def serve(self, listeners: list[socket.socket], *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        trio_listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in listeners]
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                nursery.start_soon(self._on_signals, signals, nursery)
                for listener in trio_listeners:
                    nursery.start_soon(trio.serve_listeners, self.handle, [listener])
                nursery.start_soon(self._warmup)
                systemd.notify("READY=1\nSTATUS=serving")
                interval = systemd.watchdog_interval()
                if interval is not None:
                    nursery.start_soon(self._watchdog, interval)
                log.info("daemon_ready", pid=os.getpid())
                task_status.started()
                await trio.sleep_forever()

    async def _watchdog(self, interval: float) -> None:
        """Ping systemd's watchdog from the event loop: a stuck loop stops the pings."""
        while True:
            systemd.notify("WATCHDOG=1")
            await trio.sleep(interval)

    async def _warmup(self) -> None:
        """Build the programs of all Active stages in the background, bounded."""
        from noether_nix.nix.warmup import warmup

        active = [s for s in self.engine.store.all() if s.state == "Active"]
        self.warmup = {"state": "running", "total": 0, "built": 0, "cached": 0, "failed": []}

        def progress(p: dict[str, Any]) -> None:
            self.warmup = {"state": "running", **p}

        try:
            result = await warmup(active, self.engine.programs, concurrency=self.config.engine.build_concurrency,
                                  progress=progress)
        except Exception as e:  # warmup is an optimisation; runs build on first use
            log.warning("warmup_failed", error=str(e))
            self.warmup = {"state": "failed", "error": str(e)}
            return
        self.warmup = {"state": "done", **result}
        log.info("warmup_done", **{k: v for k, v in result.items() if k != "failed"}, failed=len(result["failed"]))

    async def _on_signals(self, signals: Any, nursery: trio.Nursery) -> None:
        async for _ in signals:
            self.stopping = True
            systemd.notify("STOPPING=1\nSTATUS=stopping: letting runs finish")
            log.info("daemon_stopping", runs=len(self.runs), grace_s=self.config.grace_s)
            with trio.move_on_after(self.config.grace_s):
                while self.runs:
                    await trio.sleep(0.05)
            for scope in list(self.runs.values()):
                scope.cancel()
            await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
            return

    async def handle(self, stream: trio.SocketStream) -> None:
        async with self.connections:
            try:
                _pid, uid, gid = peer_credentials(stream.socket)
            except OSError:
                await stream.aclose()
                return
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
            if uid not in self.allowed and not self._group_allowed(uid, gid):
                # Refused after its request line and headers only, with a short
                # timeout: a disallowed peer cannot hold connection slots for long.
                self.counters["forbidden"] += 1
                log.warning("forbidden", peer_uid=uid, peer_gid=gid)
                with contextlib.suppress(Exception):
                    req = await self._read_request(stream, conn, timeout_s=1.0, head_only=True)
                    if req is not None:
                        await self._send(stream, conn, 403, f"{req.method} {req.target}", error={
                            "code": "forbidden", "message": f"uid {uid} may not use this daemon"})
                return
            try:
                while True:
                    req = await self._read_request(stream, conn)
                    if req is None:
                        return
                    self.counters["requests"] += 1
                    keep = await self._respond(stream, conn, req, uid, gid)
                    if not keep or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        return
                    conn.start_next_cycle()
            except ProtocolError as e:
                self.counters["bad_requests"] += 1
                with contextlib.suppress(Exception):
                    await self._send(stream, conn, e.status, "http", error={"code": e.code, "message": e.message})
            except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
                return
            finally:
                with contextlib.suppress(Exception):
                    await stream.aclose()

    async def _read_request(self, stream: trio.SocketStream, conn: h11.Connection, *,
                            timeout_s: float | None = None, head_only: bool = False) -> Request | None:
        """The next request; ``head_only`` stops at its head (for a peer about to be refused)."""
        head: h11.Request | None = None
        body = bytearray()
        with trio.move_on_after(timeout_s if timeout_s is not None else self.config.header_timeout_s) as scope:
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as e:
                    raise ProtocolError(400, "bad_request", f"malformed HTTP: {e}") from None
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    conn.receive_data(data)
                    if not data and conn.their_state is h11.IDLE:
                        return None
                    continue
                if isinstance(event, h11.Request):
                    head = event
                    if head_only:
                        return request_from(head, b"")
                    length = dict((k.lower(), v) for k, v in event.headers).get(b"content-length")
                    if length is not None and int(length) > self.config.max_body_bytes:
                        raise ProtocolError(413, "body_too_large",
                                            f"request body over {self.config.max_body_bytes} bytes")
                elif isinstance(event, h11.Data):
                    body.extend(event.data)
                    if len(body) > self.config.max_body_bytes:
                        raise ProtocolError(413, "body_too_large",
                                            f"request body over {self.config.max_body_bytes} bytes")
                elif isinstance(event, h11.EndOfMessage):
                    assert head is not None
                    return request_from(head, bytes(body))
                elif isinstance(event, h11.ConnectionClosed):
                    return None
        if scope.cancelled_caught:
            raise ProtocolError(408, "request_timeout", "the request was not sent in time")
        return None

    async def _send(self, stream: trio.SocketStream, conn: h11.Connection, status: int, command: str,
                    data: Any = None, error: dict[str, Any] | None = None, raw: bytes | None = None,
                    content_type: str = "application/json") -> None:
        body = raw if raw is not None else envelope(command, data, error)
        await stream.send_all(conn.send(response_head(status, content_type, len(body))) or b"")
        await stream.send_all(conn.send(h11.Data(data=body)) or b"")
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")

    # ---------------------------------------------------------------- routing

    async def _respond(self, stream: trio.SocketStream, conn: h11.Connection, req: Request, uid: int,
                       gid: int) -> bool:
        target = urlsplit(req.target)
        path = target.path.rstrip("/")
        parts = [unquote(p) for p in path.split("/")[1:]]
        query = parse_qs(target.query)
        command = f"{req.method} {path}"
        log.info("request", method=req.method, target=req.target, peer_uid=uid)
        try:
            if req.method == "POST" and parts == ["v1", "runs"]:
                await self._run(stream, conn, req, uid, gid)
                return False
            data = await self._route(req, parts, query, uid)
        except NoetherError as e:
            status = _CODE_STATUS.get(e.code, _STATUS.get(e.exit_code, 500))
            # exit_code: what the CLI exits with when it prints this error.
            await self._send(stream, conn, status, command, error={**e.to_dict(), "exit_code": e.exit_code})
            return True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise
        except Exception as e:  # one bad request must never take the daemon down
            log.exception("request_failed", method=req.method, target=req.target)
            await self._send(stream, conn, 500, command, error={"code": "internal_error",
                             "message": f"internal error: {type(e).__name__}: {e}", "exit_code": 3})
            return False
        if isinstance(data, bytes):
            await self._send(stream, conn, 200, command, raw=data, content_type="text/plain; version=0.0.4")
        else:
            await self._send(stream, conn, 200, command, data=data)
        return True

    def _body(self, req: Request, kind: type[T]) -> T:
        """The request body as ``kind`` (an empty body is ``{}``)."""
        try:
            return msgspec.json.decode(req.body or b"{}", type=kind)
        except msgspec.ValidationError as e:
            raise NoetherError("usage", f"invalid request body: {e}") from None
        except msgspec.DecodeError as e:
            raise NoetherError("invalid_json", f"request body is not JSON: {e}") from None

    @staticmethod
    def _options(raw: dict[str, Any] | None) -> RunOptions:
        opts = dict(raw or {})
        if opts.pop("detached", False):  # accepted spelling of `detach`
            opts["detach"] = True
        try:
            return msgspec.convert(opts, RunOptions)
        except msgspec.ValidationError as err:
            raise NoetherError("usage", f"invalid options: {err}") from None

    @staticmethod
    def _query_int(query: dict[str, list[str]], key: str, default: int) -> int:
        try:
            return int(query[key][-1]) if key in query else default
        except ValueError:
            raise NoetherError("usage", f"{key} must be an integer", path=key) from None

    def _gate(self, options: RunOptions, uid: int) -> None:
        """What only trusted peers may ask of a run (or of a check, which would
        otherwise tell any peer whether a path exists)."""
        if options.isolate == "none" and not self.config.allow_unsandboxed_runs:
            self.counters["forbidden"] += 1
            raise NoetherError("forbidden", "this daemon does not run stages without a sandbox "
                               "(isolate: none); its configuration would need allow_unsandboxed_runs: true")
        if uid in self.writers:
            return
        if options.allow_unsigned:
            # Unsigned stages are ones nobody trusted vouched for (store_add
            # makes them): only peers trusted to change the store may run them.
            self.counters["forbidden"] += 1
            raise NoetherError("forbidden", f"uid {uid} may run graphs but not unsigned stages (allow_unsigned)")
        if options.allow_read or options.allow_write:
            # A file grant reads or writes as the daemon's user, not the peer's:
            # only peers trusted to change the store may give one.
            self.counters["forbidden"] += 1
            raise NoetherError("forbidden", f"uid {uid} may run graphs but not grant file access "
                               "(allow_read / allow_write)")

    @staticmethod
    def _run_as(uid: int, gid: int) -> RunAs | None:
        """A root daemon runs a peer's sandboxes as that peer: what a stage
        writes, reads under a grant or connects to happens with the peer's
        rights. A peer that is the daemon's own user (or root) needs no switch."""
        if os.geteuid() != 0 or uid in (0, os.geteuid()):
            return None
        return RunAs(uid=uid, gid=gid)

    def _visible_to(self, uid: int) -> int | None:
        """Peers see (and cancel) their own runs; those trusted to change the store see all."""
        return None if uid in self.writers else uid

    def _need_write(self, uid: int) -> None:
        if uid not in self.writers:
            self.counters["forbidden"] += 1
            raise NoetherError("forbidden", f"uid {uid} may run graphs but not change the store")

    async def _route(self, req: Request, parts: list[str], query: dict[str, list[str]], uid: int) -> Any:
        from noether_nix.model.stage import stage_from_spec
        from noether_nix.service import graph, stage_test, stages, store
        from noether_nix.store.signing import sign_for_store

        m, e = req.method, self.engine
        match parts:
            case ["v1", "health"] if m == "GET":
                return await self.health()
            case ["metrics"] if m == "GET":
                return self.metrics()
            case ["v1", "check"] if m == "POST":
                check = self._body(req, CheckBody)
                check_options = self._options(check.options)
                self._gate(check_options, uid)
                return graph.check_graph(e, check.graph, check.input, check_options, check_input=check.check_input)
            case ["v1", "runs", ref] if m == "GET":
                return graph.find_run(e.runs, ref, visible_to=self._visible_to(uid))
            case ["v1", "runs", run_id] if m == "DELETE":
                scope = self.runs.get(run_id)
                if scope is None or self._visible_to(uid) not in (None, self.run_owners.get(run_id)):
                    raise NoetherError("run_not_found", f"no run {run_id} in flight", path=run_id)
                scope.cancel()
                return {"run_id": run_id, "cancelled": True}
            case ["v1", "runs"] if m == "GET":
                return graph.recent_runs(e.runs, self._query_int(query, "limit", 50),
                                         visible_to=self._visible_to(uid))
            case ["v1", "traces", cid] if m == "GET":
                latest = e.runs.latest(cid, visible_to=self._visible_to(uid))
                trace = latest["trace"] if latest else None
                if trace is None:
                    raise NoetherError("trace_not_found", f"no trace for {cid}", path=cid)
                return trace
            case ["v1", "stages"] if m == "GET":
                return stages.list_stages(e.store, lifecycle=query.get("lifecycle", ["all"])[-1],
                                          tags=query.get("tag", []),
                                          full_ids=query.get("full_ids", ["1"])[-1] not in ("0", "false"))
            case ["v1", "stages"] if m == "POST":
                self._need_write(uid)
                add = self._body(req, StageBody)
                spec = add.spec if add.spec is not None else self._body(req, dict)
                stage = sign_for_store(stage_from_spec(spec))
                return await stages.add_stage(e.store, stage, draft=add.draft, build=add.build, registry=e.programs,
                                              concurrency=self.config.engine.build_concurrency)
            case ["v1", "stages", ref] if m == "GET":
                return stages.get_stage(e.store, ref)
            case ["v1", "stages", ref, "lifecycle"] if m == "PATCH":
                self._need_write(uid)
                change = self._body(req, LifecycleBody)
                return stages.change_lifecycle(e.store, ref, change.lifecycle, successor=change.successor,
                                               registry=e.programs)
            case ["v1", "stages", ref, "verify"] if m == "GET":
                return stages.verify_stages(e.store, ref)
            case ["v1", "verify"] if m == "GET":
                return stages.verify_stages(e.store)
            case ["v1", "stages", ref, "test"] if m == "POST":
                # It runs any stored stage, unsigned and Draft ones too: a writer's operation.
                self._need_write(uid)
                return await stage_test.run_stage_tests(e, ref)
            case ["v1", "test"] if m == "POST":
                self._need_write(uid)
                return await stage_test.run_stage_tests(e)
            case ["v1", "warmup"] if m == "POST":
                self._need_write(uid)
                refs = self._body(req, WarmupBody).refs
                return await graph.warmup_stages(e.store, e.programs, refs or None,
                                                 concurrency=self.config.engine.build_concurrency)
            case ["v1", "store", "stats"] if m == "GET":
                return store.store_stats(e.store)
            case ["v1", "store", "export"] if m == "GET":
                return store.export_store(e.store)
            case ["v1", "store", "import"] if m == "POST":
                self._need_write(uid)
                doc = self._body(req, ImportBody)
                return store.import_stages(e.store, doc.doc, source=doc.source)
        raise NoetherError("not_found", f"no endpoint {req.method} {req.target}")

    # ---------------------------------------------------------------- runs

    async def _run(self, stream: trio.SocketStream, conn: h11.Connection, req: Request, uid: int,
                   gid: int) -> None:
        try:
            body = self._body(req, RunBody)
        except NoetherError as err:
            if err.code != "usage":
                raise
            raise NoetherError("usage", 'body must be {"graph": …, "input": …, "options": {…}}') from None
        options = self._options(body.options)
        self._gate(options, uid)
        if self.stopping:
            raise NoetherError("busy", "the daemon is stopping")
        if self.waiting >= self.config.max_queued_runs:
            raise NoetherError("busy", "too many runs queued; try again later")
        self.waiting += 1
        try:
            await self.run_slots.acquire()
        finally:
            self.waiting -= 1
        run_id = uuid.uuid4().hex
        scope = trio.CancelScope()
        try:
            self.runs[run_id] = scope
            self.run_owners[run_id] = uid
            self.counters["runs_started"] += 1
            log.info("run_started", run_id=run_id, peer_uid=uid)
        except BaseException:
            self.runs.pop(run_id, None)
            self.run_owners.pop(run_id, None)
            self.run_slots.release()
            raise
        head_sent = False
        gone = False  # the client went away: a detached run goes on without it, others are cancelled

        def client_gone() -> None:
            nonlocal gone
            gone = True
            if not options.detach:
                scope.cancel()

        try:
            send_lock = trio.Lock()  # concurrent stages (Parallel, Fanout) emit at once: one send at a time

            async def emit(ev: Event) -> None:
                nonlocal head_sent
                if gone:
                    return
                try:
                    # A client that stops reading (a suspended `noether run`) must not
                    # hold its run slot forever: past the timeout it counts as gone.
                    async with send_lock:
                        if gone:
                            return
                        with trio.fail_after(self.config.send_timeout_s):
                            if not head_sent:
                                await stream.send_all(conn.send(response_head(200, "application/x-ndjson")) or b"")
                                head_sent = True
                            await stream.send_all(conn.send(h11.Data(data=ndjson(msgspec.to_builtins(ev)))) or b"")
                except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
                    client_gone()

            async def watch_client() -> None:
                # Any byte or EOF from the client during a stream means it is gone.
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.receive_some(1)
                client_gone()

            result = None
            failure: NoetherError | None = None
            with scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(watch_client)
                    try:
                        result = await self.engine.run(body.graph, body.input, options, emit=emit, run_id=run_id,
                                                       run_as=self._run_as(uid, gid),
                                                       store_writes=uid in self.writers, requester_uid=uid)
                    except NoetherError as err:  # caught here, not wrapped in the nursery's ExceptionGroup
                        failure = err
                    nursery.cancel_scope.cancel()
            if failure is not None:
                raise failure
            if result is None:
                self.counters["runs_cancelled"] += 1
                log.info("run_cancelled", run_id=run_id, peer_uid=uid)
                if not gone:  # cancelled by DELETE or shutdown: the client still gets a last line
                    stored = self.engine.runs.get(run_id) or {}
                    trace = stored.get("trace") or {}
                    final_cancel = {"event": "result", "run_id": run_id, "status": "cancelled", "output": None,
                                    "composition_id": stored.get("composition_id"), "trace": trace,
                                    "warnings": trace.get("warnings", []), "effects": [],
                                    "spent_cents": stored.get("spent_cents", 0), "cache": {"hits": 0, "misses": 0},
                                    "error": {"code": "cancelled", "message": "the run was cancelled"}}
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
                        with trio.fail_after(self.config.send_timeout_s):
                            if not head_sent:
                                await stream.send_all(conn.send(response_head(200, "application/x-ndjson")) or b"")
                            await stream.send_all(conn.send(h11.Data(data=ndjson(final_cancel))) or b"")
                            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                return
            self.counters["runs_ok" if result.status == "ok" else "runs_failed"] += 1
            log.info("run_finished", run_id=run_id, status=result.status, peer_uid=uid)
            if gone:
                return
            final = {"event": "result", **msgspec.to_builtins(result)}
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                if not head_sent:
                    await stream.send_all(conn.send(response_head(200, "application/x-ndjson")) or b"")
                await stream.send_all(conn.send(h11.Data(data=ndjson(final))) or b"")
                await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
        except NoetherError:
            if head_sent:
                return
            raise
        finally:
            self.runs.pop(run_id, None)
            self.run_owners.pop(run_id, None)
            self.run_slots.release()

    # ---------------------------------------------------------------- status

    async def health(self) -> dict[str, Any]:
        host = await self._host_description()
        return {"status": "stopping" if self.stopping else "ok", "pid": os.getpid(),
                "uptime_s": int(time.time() - self.started), "runs_in_flight": len(self.runs),
                "runs_queued": self.waiting, "store": self.engine.store.count(), "warmup": self.warmup,
                **host, "counters": dict(self.counters)}

    async def _host_description(self) -> dict[str, Any]:
        """Sandbox and Nix status: they start subprocesses (bwrap, nix-build), so
        they run off the event loop, at most every 30 s."""
        from noether_nix.service.doctor import describe_nix, describe_sandbox

        cached = self._host_cache
        if cached is None or time.monotonic() - cached[0] > 30:
            async with self._host_lock:
                cached = self._host_cache
                if cached is None or time.monotonic() - cached[0] > 30:
                    host = await trio.to_thread.run_sync(
                        lambda: {"sandbox": describe_sandbox(), "nix": describe_nix()})
                    cached = self._host_cache = (time.monotonic(), host)
        return cached[1]

    def metrics(self) -> bytes:
        lines = [f"noether_{k}_total {v}" for k, v in sorted(self.counters.items())]
        lines.append(f"noether_runs_in_flight {len(self.runs)}")
        return ("\n".join(lines) + "\n").encode()


def run_daemon(config: DaemonConfig) -> int:
    structlog.configure(processors=[structlog.processors.TimeStamper(fmt="iso"),
                                    structlog.processors.add_log_level, structlog.processors.format_exc_info,
                                    structlog.processors.JSONRenderer()],
                        logger_factory=structlog.PrintLoggerFactory(file=__import__("sys").stderr))
    _take_host()
    listeners = systemd.listen_fds()
    path = None
    if not listeners:
        path = config.socket or default_socket()
        listeners = [bind_socket(path, config.socket_mode)]
    daemon = Daemon(config)
    try:
        trio.run(daemon.serve, listeners)
    finally:
        if path and os.path.exists(path):
            with contextlib.suppress(OSError):
                os.unlink(path)
    return 0


def _take_host() -> None:
    """Move into the delegated cgroup's leaf (v2), then refuse to start on a
    host whose Nix store or limits are unusable (``server/preflight.py``)."""
    from noether_nix.sandbox.delegation import claim_v2
    from noether_nix.server.preflight import refuse_if_unusable

    delegated = claim_v2()
    if delegated is not None:
        log.info("cgroup_delegated", cgroup=str(delegated))
    try:
        refuse_if_unusable()
    except NoetherError as e:
        systemd.notify(f"STATUS={e}")
        raise
