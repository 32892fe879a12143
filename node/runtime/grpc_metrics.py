"""Per-RPC server metrics with the gRPC ecosystem's standard names (node and controller).

The names, labels and label values are those of go-grpc-prometheus (and py-grpc-prometheus),
so the usual dashboards and alerts work unchanged:

    grpc_server_started_total{grpc_type,grpc_service,grpc_method}
    grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}
    grpc_server_msg_received_total{grpc_type,grpc_service,grpc_method}
    grpc_server_msg_sent_total{grpc_type,grpc_service,grpc_method}
    grpc_server_handling_seconds{grpc_type,grpc_service,grpc_method} (histogram)

`grpc_type` is unary, client_stream, server_stream or bidi_stream; `grpc_code` is the status
code as Go spells it (OK, NotFound, PermissionDenied, Canceled, ...). An RPC ends with the code
the server sent: an abort's code, Unknown for an exception grpc turns into UNKNOWN, Canceled
when the client went away. Installed as the outermost interceptor, refusals by the TLS-name and
token interceptors are counted too. The interceptor is also a prometheus-client collector, so
each process registers it in its own registry.

Why not py-grpc-prometheus / py-async-grpc-prometheus: the first has no grpc.aio interceptor;
the second misses the code of streams that end by an abort or a client cancel (the normal end of
a telemetry stream) and has no type hints.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from node.runtime.rpc import Behaviour, response_items, rewrap_handler

# grpc's classes are generic only in its type stubs.
if TYPE_CHECKING:
    ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    ServerInterceptor = grpc.aio.ServerInterceptor

# grpc.StatusCode -> the Go name go-grpc-prometheus puts in `grpc_code`.
GO_CODE = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}
_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
LABELS = ("grpc_type", "grpc_service", "grpc_method")
Ctx = grpc.aio.ServicerContext[Any, Any]


def split_method(full_method: str) -> tuple[str, str]:
    """'/pkg.Service/Method' -> ('pkg.Service', 'Method')."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return (service, method) if service else ("unknown", method)


def rpc_type(handler: grpc.RpcMethodHandler[Any, Any]) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    return "server_stream" if handler.response_streaming else "unary"


def ended_code(context: Ctx, error: BaseException | None) -> str:
    """The status the RPC ended with, as go-grpc-prometheus names it."""
    if isinstance(error, asyncio.CancelledError | GeneratorExit):  # the client went away
        return GO_CODE[grpc.StatusCode.CANCELLED]
    code: Any = context.code()
    if isinstance(code, int):
        code = _BY_NUMBER.get(code)
    if code is None or code == grpc.StatusCode.OK:
        # An exception that is not an abort becomes UNKNOWN on the wire.
        code = grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN
    return GO_CODE.get(code, "Unknown")


class GrpcServerMetrics(ServerInterceptor, Collector):
    """Server interceptor counting and timing every RPC; collect() yields its metric families."""

    def __init__(self) -> None:
        self.started = Counter(
            "grpc_server_started_total", "Total number of RPCs started on the server.", LABELS, registry=None
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            (*LABELS, "grpc_code"),
            registry=None,
        )
        self.received = Counter(
            "grpc_server_msg_received_total",
            "Total number of RPC stream messages received on the server.",
            LABELS,
            registry=None,
        )
        self.sent = Counter(
            "grpc_server_msg_sent_total",
            "Total number of gRPC stream messages sent by the server.",
            LABELS,
            registry=None,
        )
        self.seconds = Histogram(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level "
            "handled by the server.",
            LABELS,
            registry=None,
        )

    def register(self, registry: CollectorRegistry) -> CollectorRegistry:
        """Add these metrics to `registry`; returns it."""
        registry.register(self)
        return registry

    def collect(self) -> Iterable[Metric]:
        for metric in (self.started, self.handled, self.received, self.sent, self.seconds):
            yield from metric.collect()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED itself
            return handler
        service, method = split_method(handler_call_details.method)
        return self._wrap(handler, (rpc_type(handler), service, method))

    def _wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], labels: tuple[str, str, str]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        started, received, sent = (m.labels(*labels) for m in (self.started, self.received, self.sent))
        seconds = self.seconds.labels(*labels)

        def done(context: Ctx, began: float, error: BaseException | None) -> None:
            self.handled.labels(*labels, ended_code(context, error)).inc()
            seconds.observe(time.perf_counter() - began)

        def requests(request: Any) -> Any:
            if not handler.request_streaming:
                received.inc()
                return request
            return _counted(request, received.inc)

        def unary_response(behaviour: Behaviour) -> Behaviour:
            async def timed(request: Any, context: Ctx) -> Any:
                began = time.perf_counter()
                started.inc()
                try:
                    response = await behaviour(requests(request), context)
                except BaseException as error:
                    done(context, began, error)
                    raise
                sent.inc()
                done(context, began, None)
                return response

            return timed

        def stream_response(behaviour: Behaviour) -> Behaviour:
            async def timed(request: Any, context: Ctx) -> AsyncIterator[Any]:
                began = time.perf_counter()
                started.inc()
                try:
                    async for item in response_items(behaviour(requests(request), context)):
                        sent.inc()
                        yield item
                except BaseException as error:
                    done(context, began, error)
                    raise
                done(context, began, None)

            return timed

        return rewrap_handler(handler, unary_response=unary_response, stream_response=stream_response)


def _counted(requests: Any, inc: Callable[[], None]) -> Any:
    """A request stream that counts what it yields (async iterator, or grpc's sync iterator)."""
    if hasattr(requests, "__aiter__"):

        async def counting() -> AsyncIterator[Any]:
            async for item in requests:
                inc()
                yield item

        return counting()

    def counting_sync() -> Iterator[Any]:
        for item in requests:
            inc()
            yield item

    return counting_sync()
