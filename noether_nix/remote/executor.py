"""The remote executor: stage calls as Actions on an REAPI v2 cluster.

Per call: encode the Action (``action``); for a Pure stage look it up in the
ActionCache first (a hit is one round trip, the outcome marked cached);
upload only the blobs the CAS lacks; Execute and follow the operation; read
``result.json``; record the ExecutedActionMetadata. Impure Actions carry
``do_not_cache`` and skip the lookup.

Faults, each bounded: a broken operation stream is followed again with
WaitExecution (the server keeps its operations; for ``reconnect_s``); an
operation the server lost is executed again only when the stage is Pure
(an impure stage could have had its effect: that fails with
``remote_operation_lost``); blobs the server lost are uploaded again; an
Action no worker takes within ``queue_timeout_s`` is cancelled and fails
with ``remote_no_worker``.
"""

from __future__ import annotations

import contextlib
import re as regex
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
import trio

from noether_nix.engine.executor import StageCall, StageOutcome
from noether_nix.errors import NoetherError
from noether_nix.remote.action import RESULT_FILE, EncodedAction, digest_of, encode_call, key_of
from noether_nix.remote.client import Endpoint, Progress, ReapiClient, RpcFailed
from noether_nix.remote.launcher import LaunchRecord
from noether_nix.remote.protos import noether_reapi_pb2 as re
from noether_nix.settings import RemoteSettings

# Failures after which following the operation again may succeed.
TRANSIENT = {"UNAVAILABLE", "UNKNOWN", "INTERNAL", "ABORTED", "RESOURCE_EXHAUSTED"}
# Time allowed, besides the Action's own timeout, for a worker to fetch the
# inputs, build the program (a cold Nix build) and upload the result.
WORKER_OVERHEAD_S = 300.0
# Times a Pure call whose operation the server lost is executed again.
MAX_REEXECUTIONS = 2
# What a server may say in an error code of ours (anything else is remote_failed).
_CODE = regex.compile(r"[a-z][a-z0-9_]{0,63}")


def result_cap(call: StageCall) -> int:
    """The largest result.json the worker can have written for ``call``: its
    output and stderr tail under the call's caps, JSON-escaped, and the record
    around them. A larger one is refused unread."""
    return 2 * (call.limits.max_output_bytes + call.limits.max_stderr_bytes) + 1024 * 1024


def _endpoint(s: RemoteSettings) -> Endpoint:
    if not s.url:
        raise NoetherError("invalid_config", "the remote executor needs engine.remote.url", path="engine.remote.url")
    return Endpoint(url=s.url, instance=s.instance, tls_ca=s.tls_ca, tls_cert=s.tls_cert, tls_key=s.tls_key,
                    token_file=s.token_file)


def _rpc_error(e: RpcFailed, what: str, url: str | None) -> NoetherError:
    code = "remote_unavailable" if e.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED") else "remote_error"
    if e.code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        code = "remote_forbidden"
    return NoetherError(code, f"{what} at {url} failed: {e.code}: {e.details}", exit_code=3)


def _ts(t: Any) -> str | None:
    if not t.seconds and not t.nanos:
        return None
    try:
        return datetime.fromtimestamp(t.seconds + t.nanos / 1e9, UTC).isoformat()
    except (OverflowError, ValueError, OSError):  # a server's timestamp past year 9999 (or before year 1)
        return None


def _ms(a: Any, b: Any) -> int | None:
    if (not a.seconds and not a.nanos) or (not b.seconds and not b.nanos):
        return None
    return int(((b.seconds - a.seconds) * 1e9 + (b.nanos - a.nanos)) / 1e6)


def metadata_dict(md: Any) -> dict[str, Any]:
    """ExecutedActionMetadata as the trace records it."""
    return {
        "worker": md.worker[:256] or None,
        "queued_at": _ts(md.queued_timestamp),
        "worker_start_at": _ts(md.worker_start_timestamp),
        "worker_completed_at": _ts(md.worker_completed_timestamp),
        "queue_ms": _ms(md.queued_timestamp, md.worker_start_timestamp),
        "input_fetch_ms": _ms(md.input_fetch_start_timestamp, md.input_fetch_completed_timestamp),
        "execution_ms": _ms(md.execution_start_timestamp, md.execution_completed_timestamp),
        "output_upload_ms": _ms(md.output_upload_start_timestamp, md.output_upload_completed_timestamp),
    }


def _from_cache(enc: EncodedAction, call: StageCall) -> bool:
    """Whether the call may be answered from the ActionCache: a cacheable (Pure) Action, and
    a run that did not say ``--no-cache``."""
    return enc.cacheable and call.use_cache


class RemoteExecutor:
    def __init__(self, settings: RemoteSettings) -> None:
        self.settings = settings
        self._client: ReapiClient | None = None
        self._lock = trio.Lock()

    async def client(self) -> ReapiClient:
        async with self._lock:
            if self._client is None:
                self._client = await ReapiClient(_endpoint(self.settings)).open()
            return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            with trio.CancelScope(shield=True):
                await client.aclose()

    async def execute(self, call: StageCall) -> StageOutcome:
        enc = encode_call(call, profile=self.settings.profile)
        client = await self.client()
        url = self.settings.url
        started = time.monotonic()
        if _from_cache(enc, call):
            try:
                hit = await client.get_action_result(enc.action_digest, inline=[RESULT_FILE])
            except RpcFailed as e:
                raise _rpc_error(e, "the ActionCache lookup", url) from None
            if hit is not None and hit.exit_code == 0:
                outcome = await self._outcome(client, enc, hit, cached=True, started=started, operation=None,
                                              stages=[], cap=result_cap(call))
                if outcome is not None:
                    return outcome
        try:
            await client.upload_missing(enc.blobs)
        except RpcFailed as e:
            raise _rpc_error(e, "uploading the action's blobs", url) from None
        response, progress = await self._run(client, enc, call)
        status = response.status
        if status.code == 4:  # DEADLINE_EXCEEDED: the worker's backstop on the Action's timeout
            return StageOutcome(status="timed_out", isolation="bwrap", message=f"timed out after "
                                f"{call.limits.timeout_s:g}s on the remote worker ({status.message})",
                                wall_ms=int((time.monotonic() - started) * 1000),
                                remote={"action_digest": enc.key, "operation": progress.operation})
        if status.code in (3, 9):  # INVALID_ARGUMENT, FAILED_PRECONDITION: a worker refused it
            raise NoetherError("remote_refused", f"{call.label}: {status.message or response.message}",
                               exit_code=3)
        if status.code != 0:
            raise NoetherError("remote_failed", f"{call.label}: the cluster could not run it: "
                               f"{_code_name(status.code)}: {status.message or response.message}", exit_code=3)
        outcome = await self._outcome(client, enc, response.result, cached=response.cached_result, started=started,
                                      operation=progress.operation, stages=progress.stages, cap=result_cap(call))
        if outcome is not None and outcome.remote is not None and progress.reconnects:
            outcome.remote["reconnects"] = progress.reconnects
        if outcome is None:
            raise NoetherError("remote_failed", f"{call.label}: the worker's result.json is gone from the CAS",
                               exit_code=3)
        return outcome

    async def _run(self, client: ReapiClient, enc: EncodedAction, call: StageCall) -> tuple[Any, Progress]:
        """Execute ``enc`` and follow it to its ExecuteResponse, through the faults above."""
        s = self.settings
        token = trio.lowlevel.current_trio_token()
        scope = trio.CancelScope(deadline=trio.current_time() + s.queue_timeout_s)
        run_budget = call.limits.timeout_s + WORKER_OVERHEAD_S
        # Executions started (1 + re-executions) and the one that moved the deadline:
        # once per execution, however often a server says EXECUTING again.
        attempt = {"started": 0, "extended": 0}

        def extend() -> None:
            if attempt["extended"] != attempt["started"]:
                attempt["extended"] = attempt["started"]
                scope.deadline = trio.current_time() + run_budget

        def on_stage(stage: str) -> None:  # on the gRPC thread: hand over to trio
            if stage in ("EXECUTING", "COMPLETED"):
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(extend)

        progress = Progress(on_stage)
        reconnect_until: float | None = None
        reuploads = 0
        lost = 0
        name: str | None = None
        done = False
        try:
            with scope:
                while True:
                    try:
                        if name is None:
                            progress.stages.clear()
                            attempt["started"] += 1
                            op = await client.execute(enc.action_digest, skip_cache_lookup=not _from_cache(enc, call),
                                                      progress=progress)
                        else:
                            op = await client.wait_execution(name, progress)
                    except RpcFailed as e:
                        name = e.operation or name
                        if e.code == "FAILED_PRECONDITION" and reuploads < 2:  # blobs gone before it was queued
                            reuploads += 1
                            name = None
                            await self._reupload(client, enc)
                            continue
                        if e.code == "NOT_FOUND" and name is not None:
                            if not enc.cacheable:
                                raise NoetherError(
                                    "remote_operation_lost", f"{call.label}: the server lost operation {name}; the "
                                    "stage is not Pure, so it is not run again (it may have had its effect)",
                                    exit_code=3) from None
                            if lost >= MAX_REEXECUTIONS:
                                raise NoetherError(
                                    "remote_operation_lost", f"{call.label}: the server lost operation {name}, "
                                    f"and its operations for this action {lost} times before; not executed again",
                                    exit_code=3) from None
                            lost += 1
                            name = None
                            progress.reconnects += 1
                            continue
                        if e.code in TRANSIENT:
                            now = time.monotonic()
                            reconnect_until = reconnect_until or now + s.reconnect_s
                            if now < reconnect_until:
                                progress.reconnects += 1
                                await trio.sleep(min(2.0, 0.1 * 2 ** min(progress.reconnects, 5)))
                                continue
                        raise _rpc_error(e, "following the operation", s.url) from None
                    reconnect_until = None
                    response = _response(op)
                    if response.status.code == 9 and reuploads < 2:  # a worker found an input blob missing
                        reuploads += 1
                        name = None
                        await self._reupload(client, enc)
                        continue
                    done = True
                    return response, progress
        finally:
            if not done:  # queue timeout, a failure, or the run was cancelled: the server stops too
                await self._cancel_quietly(client, progress.operation)
        if scope.cancelled_caught:
            queued = not any(st in ("EXECUTING", "COMPLETED") for _, st in progress.stages)
            if queued:
                platform = ", ".join(f"{k}={v}" for k, v in enc.platform)
                raise NoetherError("remote_no_worker", f"{call.label}: no worker offering {platform} took the "
                                   f"action within {s.queue_timeout_s:g} s; it was cancelled", exit_code=3,
                                   hint="start a worker that grants what the stage needs (see noether worker --help)")
            raise NoetherError("remote_timed_out", f"{call.label}: the worker did not finish within "
                               f"{run_budget:g} s of starting", exit_code=3)
        raise AssertionError("unreachable")

    async def _reupload(self, client: ReapiClient, enc: EncodedAction) -> None:
        try:
            await client.upload_missing(enc.blobs)
        except RpcFailed as e:
            raise _rpc_error(e, "uploading the action's blobs again", self.settings.url) from None

    async def _cancel_quietly(self, client: ReapiClient, name: str | None) -> None:
        if not name:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(5), contextlib.suppress(RpcFailed):
            await client.cancel_operation(name)

    async def _outcome(self, client: ReapiClient, enc: EncodedAction, result: Any, *, cached: bool, started: float,
                       operation: str | None, stages: list[tuple[float, str]], cap: int) -> StageOutcome | None:
        """The outcome ``result.json`` records, or None when it cannot be read (the CAS lost it)."""
        out = next((f for f in result.output_files if f.path == RESULT_FILE), None)
        if out is None:
            return None
        if not 0 <= out.digest.size_bytes <= cap:
            raise NoetherError("remote_bad_result", f"the worker's result.json is said to be {out.digest.size_bytes} "
                               f"bytes, more than this stage can have written ({cap}); it was not read",
                               exit_code=3)
        data = out.contents if out.contents or out.digest.size_bytes == 0 else None
        if data is not None and key_of(digest_of(data)) != key_of(out.digest):
            raise NoetherError("remote_bad_result", "the server sent result.json inline with bytes that are not "
                               f"those of its digest {key_of(out.digest)}", exit_code=3)
        if data is None:
            try:
                data = (await client.read_blobs([out.digest]))[key_of(out.digest)]
            except RpcFailed as e:
                if e.code == "DATA_LOSS":
                    raise NoetherError("remote_bad_result", f"the CAS sent result.json with the wrong bytes: "
                                       f"{e.details}", exit_code=3) from None
                return None
        try:
            record = msgspec.json.decode(data, type=LaunchRecord)
        except (msgspec.ValidationError, msgspec.DecodeError) as e:
            raise NoetherError("remote_bad_result", f"the worker's result.json is not a launch record: {e}",
                               exit_code=3) from None
        if record.error is not None:
            md = metadata_dict(result.execution_metadata)
            where = f" (worker {md['worker']})" if md["worker"] else ""
            code = record.error.code if _CODE.fullmatch(record.error.code) else "remote_failed"
            raise NoetherError(code, record.error.message[:4000] + where, exit_code=3)
        if record.result is None:
            raise NoetherError("remote_bad_result", "the worker's result.json holds neither a result nor an error",
                               exit_code=3)
        r = record.result
        remote = {"action_digest": enc.key, "operation": operation, "cached": cached,
                  "round_trip_ms": int((time.monotonic() - started) * 1000),
                  **metadata_dict(result.execution_metadata)}
        if stages:
            remote["stages"] = [s for _, s in stages]
        fields = {f: getattr(r, f) for f in r.__struct_fields__}
        return StageOutcome(**fields, cached=cached, remote=remote)


def _response(op: Any) -> Any:
    if op.HasField("error"):
        resp = re.ExecuteResponse()
        resp.status.CopyFrom(op.error)
        return resp
    resp = re.ExecuteResponse()
    if not op.response.Unpack(resp):
        raise NoetherError("remote_bad_result", f"operation {op.name} finished without an ExecuteResponse",
                           exit_code=3)
    return resp


_CODES = {1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
          7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION", 10: "ABORTED",
          13: "INTERNAL", 14: "UNAVAILABLE", 16: "UNAUTHENTICATED"}


def _code_name(code: int) -> str:
    return _CODES.get(code, f"code {code}")
