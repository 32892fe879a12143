"""gRPC server plumbing shared by node and controller.

`RpcErrors`: the one place a servicer method's exceptions become gRPC statuses. Each service
supplies its error base class and how to describe an error (status code, message, trailing
metadata); anything else becomes INTERNAL and is logged once with its traceback.

`rewrap_handler` and `response_items`: how a server interceptor wraps a method handler's
behaviour (the TLS-name and token checks, the per-RPC metrics), for all four RPC shapes.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import grpc
import structlog

S = TypeVar("S")
Req = TypeVar("Req")
Resp = TypeVar("Resp")
E = TypeVar("E", bound=Exception)
Ctx = grpc.aio.ServicerContext[Any, Any]
Metadata = Sequence[tuple[str, str]]
Describe = Callable[[E], tuple[grpc.StatusCode, str, Metadata]]


class RpcErrors(Generic[E]):
    """Decorators for servicer methods: `@errors` (unary) and `@errors.stream` (server streaming)."""

    def __init__(
        self, error_type: type[E], describe: Describe[E], logger: structlog.typing.FilteringBoundLogger
    ) -> None:
        self._error_type = error_type
        self._describe = describe
        self._log = logger

    async def _abort(self, context: Ctx, err: BaseException, name: str) -> None:
        if isinstance(err, self._error_type):
            code, message, metadata = self._describe(err)
            await context.abort(code, message, tuple(metadata))
        self._log.exception("rpc_internal_error", rpc=name)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {name}")

    def __call__(
        self, method: Callable[[S, Req, Ctx], Awaitable[Resp]]
    ) -> Callable[[S, Req, Ctx], Awaitable[Resp]]:
        @functools.wraps(method)
        async def wrapper(self_: S, request: Req, context: Ctx) -> Resp:
            try:
                return await method(self_, request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as err:
                await self._abort(context, err, method.__name__)
                raise  # unreachable: abort raises

        return wrapper

    def stream(
        self, method: Callable[[S, Req, Ctx], AsyncGenerator[Resp, None]]
    ) -> Callable[[S, Req, Ctx], AsyncIterator[Resp]]:
        """The same mapping for server-streaming methods, before or after the first message.

        `method` may validate eagerly and return a generator; the generator is always closed
        (its `finally` runs) when the RPC ends, however it ends.
        """

        @functools.wraps(method)
        async def wrapper(self_: S, request: Req, context: Ctx) -> AsyncIterator[Resp]:
            try:
                async with contextlib.aclosing(method(self_, request, context)) as stream:
                    async for item in stream:
                        yield item
            except grpc.aio.AbortError:
                raise
            except Exception as err:
                await self._abort(context, err, method.__name__)

        return wrapper


# --- wrapping method handlers (server interceptors) ---------------------------------------------

Behaviour = Callable[..., Any]
WrapBehaviour = Callable[[Behaviour], Behaviour]


def rewrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any], *, unary_response: WrapBehaviour, stream_response: WrapBehaviour
) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` with its behaviour wrapped, same shape and (de)serializers.

    `unary_response` wraps the behaviour of unary-unary and stream-unary methods (an async
    function `(request, context) -> response`); `stream_response` that of unary-stream and
    stream-stream methods, and must return an async generator function (`response_items`
    iterates the wrapped behaviour's result). `request` is a message or, for client streaming,
    the request iterator.
    """
    kw = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary_response(handler.unary_unary), **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream_response(handler.unary_stream), **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary_response(handler.stream_unary), **kw)
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(stream_response(handler.stream_stream), **kw)


async def response_items(result: Any) -> AsyncIterator[Any]:
    """The messages a streaming behaviour's `result` yields: an async iterator's items, or none
    from a coroutine that sends them itself with `context.write()` (awaited to its end)."""
    if inspect.isasyncgen(result) or hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    else:
        await result
