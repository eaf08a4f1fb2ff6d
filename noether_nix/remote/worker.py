"""``noether worker``: a Remote Workers API bot that runs noether stage calls.

One bot session (``CreateBotSession``), kept alive by ``UpdateBotSession``
long polls that also carry the leases: a PENDING lease is accepted (ACTIVE)
and run in a task; a finished one is reported COMPLETED with its
ActionResult at once (the poll in flight is interrupted); a CANCELLED one
stops its task. At most ``concurrency`` leases run at once (the session's
``capacity``).

A lease runs only the trusted launcher: its Command's argv must be exactly
``noether launch --protocol 1``, its platform must be one this worker
advertises, and its input root exactly the three files of a stage call;
anything else fails the lease with a status saying why. The launcher
checks the call against the worker's grants and runs it in the same bwrap
sandbox, with the same policy and limits, as a local run.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import msgspec
import structlog
import trio

from noether_nix.errors import NoetherError
from noether_nix.nix.registry import ProgramRegistry
from noether_nix.nix.runtime import HOST_INTERPRETERS
from noether_nix.paths import noether_home
from noether_nix.remote.action import (
    INPUT_FILE,
    INPUT_FILES,
    LAUNCHER_ARGV,
    P_CAPABILITY,
    P_ISOLATION,
    P_LAUNCHER,
    P_NETWORK,
    P_OS,
    P_RUNTIME,
    PROGRAM_FILE,
    PROTOCOL,
    RESULT_FILE,
    SANDBOX_FILE,
    digest_of,
    key_of,
)
from noether_nix.remote.client import Endpoint, ReapiClient, RpcFailed
from noether_nix.remote.launcher import WorkerGrants, launch
from noether_nix.remote.protos import noether_reapi_pb2 as re
from noether_nix.remote.protos import noether_rwapi_pb2 as rw
from noether_nix.settings import settings

log = structlog.get_logger("noether.worker")

# gRPC status codes a lease can end with.
OK, CANCELLED, INVALID_ARGUMENT, DEADLINE_EXCEEDED, FAILED_PRECONDITION, INTERNAL, UNAVAILABLE = 0, 1, 3, 4, 9, 13, 14
# Longest UpdateBotSession long poll (the server answers sooner when it has work).
POLL_S = 30.0
#: CreateBotSession's first deadline (see ``Worker._create``).
CREATE_QUICK_S = 3.5
# Time a lease may take besides its Action's timeout: input fetch, a cold build, upload.
OVERHEAD_S = 300.0
# The largest Action, Command and input root Directory a lease may name (ours are a few hundred bytes).
MAX_MESSAGE_BYTES = 1024 * 1024
# The largest program spec (code) and sandbox spec; input.json may be as large as any value (engine.max_value_bytes).
MAX_PROGRAM_BYTES = 16 * 1024 * 1024
MAX_SANDBOX_BYTES = 1024 * 1024


def input_caps() -> dict[str, int]:
    """The largest each input file may be: a digest names its size, so a lease
    naming more is refused before anything is fetched (the worker holds the
    inputs in memory)."""
    return {PROGRAM_FILE: MAX_PROGRAM_BYTES, SANDBOX_FILE: MAX_SANDBOX_BYTES,
            INPUT_FILE: settings().engine.max_value_bytes}


def check_size(what: str, digest: Any, cap: int) -> None:
    if not 0 <= digest.size_bytes <= cap:
        raise LeaseFailed(INVALID_ARGUMENT, f"refused: {what} is {digest.size_bytes} bytes, over this worker's "
                          f"{cap}-byte cap")


class WorkerSettings(msgspec.Struct, frozen=True, kw_only=True):
    endpoint: Endpoint
    bot_id: str = ""
    concurrency: int = 1
    grants: WorkerGrants = msgspec.field(default_factory=WorkerGrants)
    #: Runtimes this worker builds programs for (default: those with a host interpreter).
    runtimes: list[str] | None = None


def available_runtimes() -> list[str]:
    return sorted(lang for lang, paths in HOST_INTERPRETERS.items() if any(os.path.exists(p) for p in paths))


def platform_of(settings: WorkerSettings) -> list[tuple[str, str]]:
    """The properties this worker offers (the scheduler matches an Action's against them)."""
    g = settings.grants
    props = [(P_OS, "linux"), (P_LAUNCHER, str(PROTOCOL))]
    props += [(P_RUNTIME, r) for r in (settings.runtimes if settings.runtimes is not None else available_runtimes())]
    if g.network:
        props.append((P_NETWORK, "allowed"))
    if g.allow_unsandboxed:
        props.append((P_ISOLATION, "none"))
    props += [(P_CAPABILITY, c) for c in g.capabilities]
    return sorted(set(props))


class LeaseFailed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def check_command(command: Any, offered: list[tuple[str, str]]) -> None:
    """Only the trusted launcher, on a platform this worker offers."""
    argv = tuple(command.arguments)
    if argv != LAUNCHER_ARGV:
        raise LeaseFailed(INVALID_ARGUMENT, f"refused: this worker runs only {' '.join(LAUNCHER_ARGV)!r}, "
                          f"not {' '.join(argv)[:200]!r}")
    if command.environment_variables or command.working_directory:
        raise LeaseFailed(INVALID_ARGUMENT, "refused: the launcher takes no environment or working directory")
    if list(command.output_paths) != [RESULT_FILE] or command.output_files or command.output_directories:
        raise LeaseFailed(INVALID_ARGUMENT, f"refused: the launcher's only output is {RESULT_FILE}")


def check_platform(platform: Any, offered: list[tuple[str, str]]) -> None:
    have = set(offered)
    missing = sorted({(p.name, p.value) for p in platform.properties} - have)
    if missing:
        raise LeaseFailed(FAILED_PRECONDITION, "this worker cannot satisfy the platform "
                          + ", ".join(f"{k}={v}" for k, v in missing) + " (it never runs an action it cannot "
                          "sandbox as asked)")


def _now(ts: Any) -> None:
    ts.FromNanoseconds(time.time_ns())


class Worker:
    def __init__(self, settings: WorkerSettings, programs: Any) -> None:
        self.settings = settings
        self.programs = programs
        self.bot_id = settings.bot_id or f"{socket.gethostname()}-{os.getpid()}"
        self.offered = platform_of(settings)
        self.leases: dict[str, Any] = {}  # lease id -> the Lease we report (state, result, status)
        self.tasks: dict[str, trio.CancelScope] = {}
        self.poll_scope: trio.CancelScope | None = None
        self.client: ReapiClient | None = None
        self.done = 0

    def session(self) -> Any:
        dev = rw.Device(handle=self.bot_id, properties=[rw.Device.Property(key=k, value=v) for k, v in self.offered])
        worker = rw.Worker(devices=[dev], configs=[rw.Worker.Config(key="capacity",
                                                                    value=str(self.settings.concurrency))])
        return rw.BotSession(bot_id=self.bot_id, status=rw.OK, worker=worker)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with ReapiClient(self.settings.endpoint) as client:
            self.client = client
            session = await self._create(client)
            log.info("worker_ready", bot=self.bot_id, session=session.name, platform=self.offered)
            task_status.started()
            async with trio.open_nursery() as nursery:
                while True:
                    out = rw.BotSession()
                    out.CopyFrom(session)
                    del out.leases[:]
                    out.leases.extend(self.leases.values())
                    with trio.CancelScope() as scope:
                        self.poll_scope = scope
                        try:
                            session = await client.update_bot_session(out, POLL_S)
                        except RpcFailed as e:
                            session = await self._recover(client, e, session)
                            continue
                    self.poll_scope = None
                    if scope.cancelled_caught:
                        continue  # a lease finished: report it in a new poll
                    self._reconcile(session, nursery)

    async def _create(self, client: ReapiClient) -> Any:
        parent = self.settings.endpoint.instance
        try:
            try:
                # A server may hold CreateBotSession open as a long poll for leases, for most
                # of the call's deadline (BuildGrid: 80 % of it, unless that is under its
                # 3 s network timeout): a short deadline registers the bot at once, and its
                # first UpdateBotSession asks for work. A server too slow for that gets the
                # long call.
                return await client.create_bot_session(parent, self.session(), timeout=CREATE_QUICK_S)
            except RpcFailed as e:
                if e.code != "DEADLINE_EXCEEDED":
                    raise
                return await client.create_bot_session(parent, self.session())
        except RpcFailed as e:
            raise NoetherError("worker_register_failed", f"the server at {self.settings.endpoint.url} refused the "
                               f"bot session: {e.code}: {e.details}", exit_code=3) from None

    async def _recover(self, client: ReapiClient, e: RpcFailed, session: Any) -> Any:
        if e.code == "DEADLINE_EXCEEDED":
            return session
        log.warning("bot_session_error", code=e.code, details=e.details[:300])
        await trio.sleep(1.0)
        if e.code in ("NOT_FOUND", "INVALID_ARGUMENT", "FAILED_PRECONDITION", "ABORTED"):
            # The server forgot this session (it expired while the server was
            # down, say). A new session for the same bot id still reports the
            # leases this bot holds: a result finished meanwhile is not lost,
            # and those the server gave to others are dropped on the next answer.
            try:
                session = await client.create_bot_session(self.settings.endpoint.instance, self.session())
                log.info("bot_session_recreated", bot=self.bot_id, session=session.name)
                return session
            except RpcFailed as e2:
                log.warning("bot_session_recreate_failed", code=e2.code)
        return session

    def _reconcile(self, session: Any, nursery: trio.Nursery) -> None:
        seen = set()
        for lease in session.leases:
            seen.add(lease.id)
            mine = self.leases.get(lease.id)
            if lease.state == rw.CANCELLED:
                if lease.id in self.tasks:
                    self.tasks[lease.id].cancel()
                self.leases.pop(lease.id, None)
            elif lease.state in (rw.PENDING, rw.ACTIVE) and mine is None:
                # New work (BuildGrid hands a lease over already ACTIVE).
                accepted = rw.Lease()
                accepted.CopyFrom(lease)
                accepted.state = rw.ACTIVE
                self.leases[lease.id] = accepted
                nursery.start_soon(self._run_lease, lease.id, lease.payload)
        for lease_id in [k for k in self.leases if k not in seen]:
            # Completed and no longer listed: recorded. Running and no longer
            # listed: the server gave it to another bot (this one was presumed
            # dead) or dropped it; stop it, its result would be ignored.
            if lease_id in self.tasks:
                self.tasks[lease_id].cancel()
            del self.leases[lease_id]

    def _finish(self, lease_id: str, code: int, message: str, result: Any | None) -> None:
        lease = self.leases.get(lease_id)
        if lease is None:
            return
        lease.state = rw.COMPLETED
        lease.status.code = code
        lease.status.message = message
        if result is not None:
            lease.result.Pack(result)
        self.done += 1
        if self.poll_scope is not None:
            self.poll_scope.cancel()

    async def _run_lease(self, lease_id: str, payload: Any) -> None:
        with trio.CancelScope() as scope:
            self.tasks[lease_id] = scope
            log.info("lease_started", lease=lease_id, bot=self.bot_id)
            try:
                result = await self._execute(payload)
                log.info("lease_done", lease=lease_id, bot=self.bot_id, exit_code=result.exit_code)
                self._finish(lease_id, OK, "", result)
            except LeaseFailed as e:
                log.warning("lease_failed", lease=lease_id, code=e.code, message=e.message)
                self._finish(lease_id, e.code, e.message, None)
            except RpcFailed as e:  # the CAS went away: the server may retry elsewhere
                log.warning("lease_unavailable", lease=lease_id, code=e.code, details=e.details[:300])
                self._finish(lease_id, UNAVAILABLE, f"worker {self.bot_id}: {e}", None)
            except Exception as e:  # a worker bug: fail this lease, keep serving
                log.exception("lease_crashed", lease=lease_id)
                self._finish(lease_id, INTERNAL, f"worker {self.bot_id}: {type(e).__name__}: {e}", None)
            finally:
                self.tasks.pop(lease_id, None)
        if scope.cancelled_caught:
            self.leases.pop(lease_id, None)

    async def _execute(self, payload: Any) -> Any:
        client = self.client
        assert client is not None
        md = re.ExecutedActionMetadata(worker=self.bot_id)
        _now(md.worker_start_timestamp)
        _now(md.input_fetch_start_timestamp)
        action = re.Action()
        if not payload.Unpack(action):
            digest = re.Digest()
            if not payload.Unpack(digest):
                raise LeaseFailed(INVALID_ARGUMENT, "the lease carries neither an Action nor its digest")
            check_size("the Action", digest, MAX_MESSAGE_BYTES)
            action.ParseFromString(await self._blob(client, digest))
        check_size("the Command", action.command_digest, MAX_MESSAGE_BYTES)
        check_size("the input root", action.input_root_digest, MAX_MESSAGE_BYTES)
        command = re.Command()
        command.ParseFromString(await self._blob(client, action.command_digest))
        check_command(command, self.offered)
        check_platform(action.platform if action.HasField("platform") else command.platform, self.offered)
        root = re.Directory()
        root.ParseFromString(await self._blob(client, action.input_root_digest))
        names = [f.name for f in root.files]
        if root.directories or root.symlinks or sorted(names) != sorted(INPUT_FILES):
            raise LeaseFailed(INVALID_ARGUMENT, f"refused: the input root must hold exactly {', '.join(INPUT_FILES)}")
        caps = input_caps()
        for f in root.files:
            check_size(f.name, f.digest, caps[f.name])
        blobs = await self._blobs(client, [f.digest for f in root.files])
        files = {f.name: blobs[key_of(f.digest)] for f in root.files}
        _now(md.input_fetch_completed_timestamp)
        _now(md.execution_start_timestamp)
        timeout = action.timeout.seconds + action.timeout.nanos / 1e9 if action.HasField("timeout") else 3600.0
        with trio.move_on_after(timeout + OVERHEAD_S) as guard:
            rc, record = await launch(files, programs=self.programs, grants=self.settings.grants)
        if guard.cancelled_caught:
            raise LeaseFailed(DEADLINE_EXCEEDED, f"the action ran past its {timeout:g} s timeout (plus "
                              f"{OVERHEAD_S:g} s for building) on worker {self.bot_id}")
        _now(md.execution_completed_timestamp)
        _now(md.output_upload_start_timestamp)
        digest = digest_of(record)
        await client.upload({key_of(digest): record})
        _now(md.output_upload_completed_timestamp)
        _now(md.worker_completed_timestamp)
        return re.ActionResult(output_files=[re.OutputFile(path=RESULT_FILE, digest=digest)], exit_code=rc,
                               execution_metadata=md)

    async def _blob(self, client: ReapiClient, digest: Any) -> bytes:
        return (await self._blobs(client, [digest]))[key_of(digest)]

    async def _blobs(self, client: ReapiClient, digests: list[Any]) -> dict[str, bytes]:
        try:
            return await client.read_blobs(digests)
        except RpcFailed as e:
            if e.code == "NOT_FOUND":  # the client uploads them again and re-executes
                raise LeaseFailed(FAILED_PRECONDITION, f"missing input blob: {e.details}") from None
            raise


async def run_worker(settings: WorkerSettings, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                     ) -> None:
    home = noether_home()
    home.mkdir(parents=True, exist_ok=True)
    worker = Worker(settings, ProgramRegistry(home / "noether.db"))
    await worker.serve(task_status=task_status)
