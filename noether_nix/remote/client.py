"""The REAPI v2 / Remote Workers API calls noether makes, awaited from trio.

One ``ReapiClient`` owns one gRPC channel on its own asyncio thread
(``bridge``). Methods raise ``RpcFailed`` (the gRPC status code's name and
the server's words) for the caller to turn into a NoetherError with a code
users can act on.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from noether_nix.errors import NoetherError
from noether_nix.remote.action import BlobKey, digest_from_key, digest_of, key_of
from noether_nix.remote.bridge import AsyncioThread
from noether_nix.remote.protos import noether_bytestream_pb2 as bs
from noether_nix.remote.protos import noether_reapi_pb2 as re
from noether_nix.remote.protos import noether_rwapi_pb2 as rw

# gRPC's fork handlers crash a child forked while its threads run (measured:
# sandboxes died of SIGSEGV in their first milliseconds when a worker ran
# leases side by side). Our children exec at once and never touch gRPC, so
# they need no fork support: off, before grpc is first imported.
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "0"

_V2 = "/build.bazel.remote.execution.v2."
_BOTS = "/google.devtools.remoteworkers.v1test2.Bots/"
# Below gRPC's default 4 MiB message cap, with room for the request's framing.
DEFAULT_BATCH_BYTES = 4 * 1024 * 1024 - 64 * 1024
BYTESTREAM_CHUNK = 1024 * 1024
MAX_MESSAGE = 64 * 1024 * 1024
# Stage transitions recorded per operation (a server flapping between stages adds no more).
MAX_STAGES = 32


class RpcFailed(Exception):
    def __init__(self, code: str, details: str, *, operation: str | None = None) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details
        #: For a broken Execute / WaitExecution stream: the operation it was following.
        self.operation = operation


class Progress:
    """What the server said so far about one operation (written on the gRPC
    thread; ``on_stage`` is called there, so it must only hand over)."""

    def __init__(self, on_stage: Callable[[str], None] | None = None) -> None:
        self.operation: str | None = None
        self.stages: list[tuple[float, str]] = []
        #: Times the stream broke and was followed again (WaitExecution) or re-executed.
        self.reconnects = 0
        self.on_stage = on_stage


class Endpoint(msgspec.Struct, frozen=True, kw_only=True):
    """Where the cluster is and how to reach it.

    ``url``: ``grpc://host:port`` (plain), ``grpcs://host:port`` (TLS), or
    ``unix:/path``. ``tls_ca`` (PEM roots; the system's by default),
    ``tls_cert`` / ``tls_key`` (a client certificate, for mTLS), and
    ``token_file`` (a bearer token sent as ``authorization``) are files."""

    url: str
    instance: str = ""
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    token_file: str | None = None

    def target(self) -> tuple[str, bool]:
        if self.url.startswith("unix:"):
            return self.url, False
        parts = urlsplit(self.url)
        if parts.scheme not in ("grpc", "grpcs") or not parts.hostname or parts.path not in ("", "/"):
            raise NoetherError("invalid_reapi_url", f"{self.url!r} is not grpc://host:port, grpcs://host:port "
                               "or unix:/path", exit_code=2)
        port = parts.port or (443 if parts.scheme == "grpcs" else 80)
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return f"{host}:{port}", parts.scheme == "grpcs"


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise NoetherError("reapi_credentials_unreadable", f"cannot read the {what} {path}: {e.strerror}",
                           path=path, exit_code=2) from None


def _ser(msg: Any) -> bytes:
    return bytes(msg.SerializeToString())


def _stage_name(op: Any) -> str | None:
    meta = re.ExecuteOperationMetadata()
    if op.metadata.Unpack(meta):
        return str(re.ExecutionStage.Value.Name(meta.stage))
    return None


class ReapiClient:
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.instance = endpoint.instance
        self._thread = AsyncioThread()
        self._channel: Any = None
        self._metadata: tuple[tuple[str, str], ...] = ()
        self._batch_bytes: int | None = None

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> ReapiClient:
        target, secure = self.endpoint.target()
        creds = None
        if secure:
            import grpc

            creds = grpc.ssl_channel_credentials(_read(self.endpoint.tls_ca, "TLS root certificates"),
                                                 _read(self.endpoint.tls_key, "TLS client key"),
                                                 _read(self.endpoint.tls_cert, "TLS client certificate"))
        elif self.endpoint.tls_cert or self.endpoint.tls_key or self.endpoint.tls_ca:
            raise NoetherError("invalid_reapi_url", "TLS options need a grpcs:// URL", exit_code=2)
        token = _read(self.endpoint.token_file, "token file")
        if token is not None:
            self._metadata = (("authorization", f"Bearer {token.decode().strip()}"),)
        self._thread.start()
        self._channel = await self._thread.run(_open_channel, target, creds)
        return self

    async def aclose(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            try:
                await self._thread.run(channel.close)
            finally:
                self._thread.stop()

    async def __aenter__(self) -> ReapiClient:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------ plumbing

    async def _unary(self, method: str, request: Any, response: Any, timeout: float | None) -> Any:
        async def call() -> Any:
            import grpc

            mc = self._channel.unary_unary(method, request_serializer=_ser, response_deserializer=response.FromString)
            try:
                return await mc(request, timeout=timeout, metadata=self._metadata)
            except grpc.aio.AioRpcError as e:
                raise RpcFailed(e.code().name, e.details() or "") from None

        return await self._thread.run(call)

    # ------------------------------------------------------------ capabilities, action cache

    async def capabilities(self) -> Any:
        return await self._unary(_V2 + "Capabilities/GetCapabilities",
                                 re.GetCapabilitiesRequest(instance_name=self.instance), re.ServerCapabilities, 30)

    async def batch_bytes(self) -> int:
        if self._batch_bytes is None:
            try:
                caps = await self.capabilities()
                limit = int(caps.cache_capabilities.max_batch_total_size_bytes)
            except RpcFailed:
                limit = 0
            self._batch_bytes = min(limit, DEFAULT_BATCH_BYTES) if limit > 0 else DEFAULT_BATCH_BYTES
        return self._batch_bytes

    async def get_action_result(self, digest: Any, inline: list[str] | None = None) -> Any | None:
        req = re.GetActionResultRequest(instance_name=self.instance, action_digest=digest,
                                        inline_output_files=inline or [])
        try:
            return await self._unary(_V2 + "ActionCache/GetActionResult", req, re.ActionResult, 60)
        except RpcFailed as e:
            if e.code == "NOT_FOUND":
                return None
            raise

    # ------------------------------------------------------------ CAS

    async def find_missing(self, digests: Iterable[Any]) -> list[Any]:
        req = re.FindMissingBlobsRequest(instance_name=self.instance, blob_digests=list(digests))
        resp = await self._unary(_V2 + "ContentAddressableStorage/FindMissingBlobs", req,
                                 re.FindMissingBlobsResponse, 60)
        return list(resp.missing_blob_digests)

    async def upload_missing(self, blobs: dict[BlobKey, bytes]) -> int:
        """Upload the blobs the CAS lacks; how many were uploaded."""
        missing = await self.find_missing(digest_from_key(k) for k in blobs)
        await self.upload({key_of(d): blobs[key_of(d)] for d in missing})
        return len(missing)

    async def upload(self, blobs: dict[BlobKey, bytes]) -> None:
        limit = await self.batch_bytes()
        batch: list[Any] = []
        size = 0
        for k, data in blobs.items():
            if len(data) > limit:
                await self._bytestream_write(digest_from_key(k), data)
                continue
            if batch and size + len(data) > limit:
                await self._batch_update(batch)
                batch, size = [], 0
            batch.append(re.BatchUpdateBlobsRequest.Request(digest=digest_from_key(k), data=data))
            size += len(data) + 100
        if batch:
            await self._batch_update(batch)

    async def _batch_update(self, requests: list[Any]) -> None:
        req = re.BatchUpdateBlobsRequest(instance_name=self.instance, requests=requests)
        resp = await self._unary(_V2 + "ContentAddressableStorage/BatchUpdateBlobs", req,
                                 re.BatchUpdateBlobsResponse, 120)
        for r in resp.responses:
            if r.status.code != 0:
                raise RpcFailed(f"code {r.status.code}", f"the CAS refused blob {key_of(r.digest)}: "
                                f"{r.status.message}")

    async def _bytestream_write(self, digest: Any, data: bytes) -> None:
        prefix = f"{self.instance}/" if self.instance else ""
        name = f"{prefix}uploads/{uuid.uuid4()}/blobs/{digest.hash}/{digest.size_bytes}"

        async def call() -> Any:
            import grpc

            def chunks() -> Any:
                for off in range(0, max(len(data), 1), BYTESTREAM_CHUNK):
                    yield bs.WriteRequest(resource_name=name if off == 0 else "", write_offset=off,
                                          data=data[off:off + BYTESTREAM_CHUNK],
                                          finish_write=off + BYTESTREAM_CHUNK >= len(data))

            mc = self._channel.stream_unary("/google.bytestream.ByteStream/Write", request_serializer=_ser,
                                            response_deserializer=bs.WriteResponse.FromString)
            try:
                return await mc(chunks(), timeout=300, metadata=self._metadata)
            except grpc.aio.AioRpcError as e:
                raise RpcFailed(e.code().name, e.details() or "") from None

        await self._thread.run(call)

    async def read_blobs(self, digests: list[Any]) -> dict[BlobKey, bytes]:
        """The blobs, checked against their digests; a missing one raises RpcFailed("NOT_FOUND")."""
        limit = await self.batch_bytes()
        out: dict[BlobKey, bytes] = {}
        small = [d for d in digests if d.size_bytes <= limit]
        for d in digests:
            if d.size_bytes > limit:
                out[key_of(d)] = await self._bytestream_read(d)
        while small:
            batch: list[Any] = []
            size = 0
            while small and (not batch or size + small[0].size_bytes <= limit):
                d = small.pop(0)
                batch.append(d)
                size += d.size_bytes + 100
            req = re.BatchReadBlobsRequest(instance_name=self.instance, digests=batch)
            resp = await self._unary(_V2 + "ContentAddressableStorage/BatchReadBlobs", req,
                                     re.BatchReadBlobsResponse, 120)
            for r in resp.responses:
                if r.status.code != 0:
                    raise RpcFailed("NOT_FOUND" if r.status.code == 5 else f"code {r.status.code}",
                                    f"blob {key_of(r.digest)}: {r.status.message or 'missing'}")
                out[key_of(r.digest)] = r.data
        for d in digests:
            data = out.get(key_of(d))
            if data is None or key_of(digest_of(data)) != key_of(d):
                raise RpcFailed("DATA_LOSS", f"the CAS returned wrong or no bytes for blob {key_of(d)}")
        return out

    async def _bytestream_read(self, digest: Any) -> bytes:
        prefix = f"{self.instance}/" if self.instance else ""
        name = f"{prefix}blobs/{digest.hash}/{digest.size_bytes}"

        async def call() -> bytes:
            import grpc

            mc = self._channel.unary_stream("/google.bytestream.ByteStream/Read", request_serializer=_ser,
                                            response_deserializer=bs.ReadResponse.FromString)
            buf = bytearray()
            try:
                async for r in mc(bs.ReadRequest(resource_name=name), timeout=300, metadata=self._metadata):
                    buf.extend(r.data)
                    if len(buf) > digest.size_bytes:
                        raise RpcFailed("DATA_LOSS", f"blob {key_of(digest)} is longer than its digest says")
            except grpc.aio.AioRpcError as e:
                raise RpcFailed(e.code().name, e.details() or "") from None
            return bytes(buf)

        return await self._thread.run(call)

    # ------------------------------------------------------------ execution

    async def execute(self, action_digest: Any, *, skip_cache_lookup: bool, progress: Progress) -> Any:
        """Execute and follow the operation to its end."""
        req = re.ExecuteRequest(instance_name=self.instance, action_digest=action_digest,
                                skip_cache_lookup=skip_cache_lookup)
        return await self._thread.run(self._follow, _V2 + "Execution/Execute", req, progress)

    async def wait_execution(self, name: str, progress: Progress) -> Any:
        return await self._thread.run(self._follow, _V2 + "Execution/WaitExecution",
                                      re.WaitExecutionRequest(name=name), progress)

    async def cancel_operation(self, name: str) -> None:
        from google.longrunning.operations_proto_pb2 import CancelOperationRequest
        from google.protobuf.empty_pb2 import Empty

        await self._unary("/google.longrunning.Operations/CancelOperation", CancelOperationRequest(name=name),
                          Empty, 10)

    async def _follow(self, method: str, request: Any, progress: Progress) -> Any:
        import grpc
        from google.longrunning.operations_proto_pb2 import Operation

        mc = self._channel.unary_stream(method, request_serializer=_ser, response_deserializer=Operation.FromString)
        name = getattr(request, "name", None) or None
        try:
            async for op in mc(request, metadata=self._metadata):
                name = op.name or name
                progress.operation = name
                stage = _stage_name(op)
                if stage and (not progress.stages or progress.stages[-1][1] != stage) \
                        and len(progress.stages) < MAX_STAGES:
                    progress.stages.append((time.time(), stage))
                    if progress.on_stage is not None:
                        progress.on_stage(stage)
                if op.done:
                    return op
        except grpc.aio.AioRpcError as e:
            raise RpcFailed(e.code().name, e.details() or "", operation=name) from None
        raise RpcFailed("UNAVAILABLE", "the operation stream ended before the operation was done", operation=name)

    # ------------------------------------------------------------ bots (Remote Workers API)

    async def create_bot_session(self, parent: str, session: Any, timeout: float = 60) -> Any:
        req = rw.CreateBotSessionRequest(parent=parent, bot_session=session)
        return await self._unary(_BOTS + "CreateBotSession", req, rw.BotSession, timeout)

    async def update_bot_session(self, session: Any, timeout: float) -> Any:
        req = rw.UpdateBotSessionRequest(name=session.name, bot_session=session)
        return await self._unary(_BOTS + "UpdateBotSession", req, rw.BotSession, timeout)


async def _open_channel(target: str, creds: Any) -> Any:
    import grpc

    # No keepalive pings: servers answer pings more often than they allow
    # with GOAWAY; a server that goes away closes the connection, which
    # fails the calls on it at once.
    options = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE),
               ("grpc.enable_retries", 0)]
    if creds is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, creds, options=options)
