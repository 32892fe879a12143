"""The one place a servicer method's exceptions become gRPC statuses (shared by node and controller).

Each service supplies its error base class and how to describe an error (status code,
message, trailing metadata); anything else becomes INTERNAL and is logged once with its
traceback.
"""

from __future__ import annotations

import contextlib
import functools
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
