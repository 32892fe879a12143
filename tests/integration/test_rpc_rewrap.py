"""`rewrap_handler` and `response_items` (node/runtime/rpc.py), the one way the server
interceptors (TLS-name and token checks, per-RPC metrics) wrap a method handler's behaviour.

Covers, on a real grpc.aio server with a generic service of every RPC shape: unary-unary,
unary-stream (an async generator, and a coroutine that sends with `context.write()`),
stream-unary and stream-stream are each rebuilt with the same shape, the handler's own
(de)serializers (a request/response seen through them both ways) and the wrapper around the
behaviour (it runs before and after it, and sees every response it sends); a wrapper that aborts
before the behaviour stops it from running, with the abort's status; a handler nothing matches
passes through untouched (grpc answers UNIMPLEMENTED).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from node.runtime.rpc import Behaviour, response_items, rewrap_handler

if TYPE_CHECKING:
    ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    ServerInterceptor = grpc.aio.ServerInterceptor

SERVICE = "test.Shapes"
Ctx = grpc.aio.ServicerContext[Any, Any]


@dataclass(frozen=True, slots=True)
class Msg:
    """A message object (grpc would encode a plain str itself before the serializer)."""

    text: str


def deserialize(data: bytes) -> Msg:
    return Msg("in:" + data.decode())


def serialize(msg: Msg) -> bytes:
    return (msg.text + ":out").encode()


async def unary(request: Msg, context: Ctx) -> Msg:
    return Msg(f"u({request.text})")


async def server_stream(request: Msg, context: Ctx) -> AsyncIterator[Msg]:
    for n in range(3):
        yield Msg(f"s{n}({request.text})")


async def writer(request: Msg, context: Ctx) -> None:
    for n in range(2):
        await context.write(Msg(f"w{n}({request.text})"))


async def client_stream(requests: AsyncIterator[Msg], context: Ctx) -> Msg:
    return Msg("+".join([r.text async for r in requests]))


async def bidi(requests: AsyncIterator[Msg], context: Ctx) -> AsyncIterator[Msg]:
    async for r in requests:
        yield Msg(f"b({r.text})")


def shapes() -> grpc.GenericRpcHandler[Any, Any]:
    kw: dict[str, Any] = {"request_deserializer": deserialize, "response_serializer": serialize}
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary, **kw),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream, **kw),
            "Writer": grpc.unary_stream_rpc_method_handler(writer, **kw),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream, **kw),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi, **kw),
        },
    )


class Wrapping(ServerInterceptor):
    """Logs around each behaviour and marks each response; `refuse` aborts before it runs."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.refuse = False

    async def _before(self, context: Ctx, name: str) -> None:
        self.log.append(f"before {name}")
        if self.refuse:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "refused")

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(details)
        if handler is None:
            return handler
        name = details.method.rpartition("/")[2]

        def unary_response(behaviour: Behaviour) -> Behaviour:
            async def wrapped(request: Any, context: Ctx) -> Any:
                await self._before(context, name)
                response = await behaviour(request, context)
                self.log.append(f"after {name}")
                return Msg(f"[{response.text}]")

            return wrapped

        def stream_response(behaviour: Behaviour) -> Behaviour:
            async def wrapped(request: Any, context: Ctx) -> AsyncIterator[Any]:
                await self._before(context, name)
                async for item in response_items(behaviour(request, context)):
                    self.log.append(f"sent {item.text}")
                    yield Msg(f"[{item.text}]")
                self.log.append(f"after {name}")

            return wrapped

        rebuilt = rewrap_handler(handler, unary_response=unary_response, stream_response=stream_response)
        shape = ("request_streaming", "response_streaming", "request_deserializer", "response_serializer")
        assert [getattr(rebuilt, a) for a in shape] == [getattr(handler, a) for a in shape]
        return rebuilt


async def requests_of(*items: bytes) -> AsyncIterator[bytes]:
    for item in items:
        yield item


@pytest.mark.asyncio
async def test_every_shape_is_wrapped_with_its_serializers_kept() -> None:
    interceptor = Wrapping()
    server = grpc.aio.server(interceptors=(interceptor,))
    server.add_generic_rpc_handlers((shapes(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:

            def method(kind: str, name: str) -> Any:
                factory = getattr(channel, kind)
                return factory(f"/{SERVICE}/{name}", request_serializer=None, response_deserializer=None)

            assert await method("unary_unary", "Unary")(b"a") == b"[u(in:a)]:out"
            assert interceptor.log == ["before Unary", "after Unary"]

            interceptor.log.clear()
            got = [m async for m in method("unary_stream", "ServerStream")(b"b")]
            assert got == [f"[s{n}(in:b)]:out".encode() for n in range(3)]
            assert interceptor.log == [
                "before ServerStream",
                *(f"sent s{n}(in:b)" for n in range(3)),
                "after ServerStream",
            ]

            interceptor.log.clear()  # written with context.write(): sent as is, past the wrapper
            got = [m async for m in method("unary_stream", "Writer")(b"c")]
            assert got == [b"w0(in:c):out", b"w1(in:c):out"]
            assert interceptor.log == ["before Writer", "after Writer"]

            interceptor.log.clear()
            got_one = await method("stream_unary", "ClientStream")(requests_of(b"x", b"y"))
            assert got_one == b"[in:x+in:y]:out"
            assert interceptor.log == ["before ClientStream", "after ClientStream"]

            interceptor.log.clear()
            got = [m async for m in method("stream_stream", "Bidi")(requests_of(b"p", b"q"))]
            assert got == [b"[b(in:p)]:out", b"[b(in:q)]:out"]
            assert interceptor.log == ["before Bidi", "sent b(in:p)", "sent b(in:q)", "after Bidi"]

            interceptor.log.clear()
            interceptor.refuse = True
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await method("unary_unary", "Unary")(b"a")
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in method("stream_stream", "Bidi")(requests_of(b"p")):
                    pass
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert interceptor.log == ["before Unary", "before Bidi"]  # the behaviours never ran

            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await method("unary_unary", "NoSuch")(b"a")
            assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(None)
