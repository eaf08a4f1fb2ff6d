"""A hostile REAPI server for tests: grpcio's own server on 127.0.0.1, answering
the calls a RemoteExecutor makes with whatever a test scripts (lies, huge
blobs, operations that never end). No BuildGrid, no PostgreSQL: a few
seconds per test. Stopped by the fixture that started it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
from google.longrunning.operations_proto_pb2 import CancelOperationRequest, Operation
from google.protobuf.empty_pb2 import Empty

from noether_nix.remote.protos import noether_bytestream_pb2 as bs
from noether_nix.remote.protos import noether_reapi_pb2 as re

V2 = "build.bazel.remote.execution.v2."


def operation(name: str, stage: int | None = None, *, response: Any = None) -> Operation:
    op = Operation(name=name)
    if stage is not None:
        op.metadata.Pack(re.ExecuteOperationMetadata(stage=stage))
    if response is not None:
        op.done = True
        op.response.Pack(response)
    return op


class HostileServer:
    """Scripted answers: ``action_result(request)`` (None: NOT_FOUND),
    ``execute(request, context)`` (an iterator of Operations), ``read(resource_name)``
    (an iterator of byte chunks). Counts what it served."""

    def __init__(self) -> None:
        self.action_result: Callable[[Any], Any | None] = lambda req: None
        self.execute: Callable[[Any, Any], Iterator[Operation]] = lambda req, ctx: iter(())
        self.read: Callable[[str], Iterator[bytes]] = lambda name: iter(())
        self.calls: dict[str, int] = {}
        self.bytes_served = 0
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None
        self.port = 0

    def _count(self, name: str) -> None:
        with self._lock:
            self.calls[name] = self.calls.get(name, 0) + 1

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    def start(self) -> HostileServer:
        def get_action_result(req: Any, ctx: Any) -> Any:
            self._count("GetActionResult")
            result = self.action_result(req)
            if result is None:
                ctx.abort(grpc.StatusCode.NOT_FOUND, "no such action")
            return result

        def find_missing(req: Any, ctx: Any) -> Any:
            self._count("FindMissingBlobs")
            return re.FindMissingBlobsResponse()  # "I have everything"

        def execute(req: Any, ctx: Any) -> Iterator[Operation]:
            self._count("Execute")
            yield from self.execute(req, ctx)

        def wait_execution(req: Any, ctx: Any) -> Iterator[Operation]:
            self._count("WaitExecution")
            yield from self.execute(req, ctx)

        def cancel(req: Any, ctx: Any) -> Any:
            self._count("CancelOperation")
            return Empty()

        def read(req: Any, ctx: Any) -> Iterator[Any]:
            self._count("Read")
            for chunk in self.read(req.resource_name):
                with self._lock:
                    self.bytes_served += len(chunk)
                yield bs.ReadResponse(data=chunk)

        def batch_read(req: Any, ctx: Any) -> Any:
            self._count("BatchReadBlobs")
            ctx.abort(grpc.StatusCode.UNIMPLEMENTED, "use the ByteStream")

        uu, us = grpc.unary_unary_rpc_method_handler, grpc.unary_stream_rpc_method_handler
        handlers = [
            grpc.method_handlers_generic_handler(V2 + "ActionCache", {"GetActionResult": uu(
                get_action_result, re.GetActionResultRequest.FromString, re.ActionResult.SerializeToString)}),
            grpc.method_handlers_generic_handler(V2 + "ContentAddressableStorage", {
                "FindMissingBlobs": uu(find_missing, re.FindMissingBlobsRequest.FromString,
                                       re.FindMissingBlobsResponse.SerializeToString),
                "BatchReadBlobs": uu(batch_read, re.BatchReadBlobsRequest.FromString,
                                     re.BatchReadBlobsResponse.SerializeToString)}),
            grpc.method_handlers_generic_handler(V2 + "Execution", {
                "Execute": us(execute, re.ExecuteRequest.FromString, Operation.SerializeToString),
                "WaitExecution": us(wait_execution, re.WaitExecutionRequest.FromString,
                                    Operation.SerializeToString)}),
            grpc.method_handlers_generic_handler("google.longrunning.Operations", {"CancelOperation": uu(
                cancel, CancelOperationRequest.FromString, Empty.SerializeToString)}),
            grpc.method_handlers_generic_handler("google.bytestream.ByteStream", {"Read": us(
                read, bs.ReadRequest.FromString, bs.ReadResponse.SerializeToString)}),
        ]
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=handlers)
        self.port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait(10)
            self._server = None
