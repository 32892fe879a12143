"""The single table from core errors to gRPC status codes.

KVM-level errors carry the kernel errno; it travels to the client as the
trailing metadata key `kvm-errno` next to the mapped status code.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import structlog

from node.core.errors import BadRequest, EmulatorError, VcpuNotFound, VmNotFound, WrongClockMode

ERRNO_METADATA_KEY = "kvm-errno"

# errno -> status code: the one mapping every node RPC uses.
ERRNO_STATUS: dict[str, grpc.StatusCode] = {
    "ENOENT": grpc.StatusCode.NOT_FOUND,
    "EINVAL": grpc.StatusCode.INVALID_ARGUMENT,
    "EBUSY": grpc.StatusCode.FAILED_PRECONDITION,
    "ENXIO": grpc.StatusCode.UNIMPLEMENTED,
    "EEXIST": grpc.StatusCode.ALREADY_EXISTS,
    "EPERM": grpc.StatusCode.PERMISSION_DENIED,
}
# Errors with no kernel errno.
CLASS_STATUS: dict[type[EmulatorError], grpc.StatusCode] = {
    VmNotFound: grpc.StatusCode.NOT_FOUND,
    VcpuNotFound: grpc.StatusCode.NOT_FOUND,
    WrongClockMode: grpc.StatusCode.FAILED_PRECONDITION,
    BadRequest: grpc.StatusCode.INVALID_ARGUMENT,
}

log = structlog.get_logger("kvmtimer.node")


def status_for(error: EmulatorError) -> grpc.StatusCode:
    if error.errno_name is not None:
        return ERRNO_STATUS.get(error.errno_name, grpc.StatusCode.INTERNAL)
    for cls, code in CLASS_STATUS.items():
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.INTERNAL


def trailing_metadata_for(error: EmulatorError) -> tuple[tuple[str, str], ...]:
    return ((ERRNO_METADATA_KEY, error.errno_name),) if error.errno_name else ()


S = TypeVar("S")
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Ctx = grpc.aio.ServicerContext[Any, Any]


def rpc(
    method: Callable[[S, Req, Ctx], Awaitable[Resp]],
) -> Callable[[S, Req, Ctx], Awaitable[Resp]]:
    """Wrap a unary servicer method: EmulatorError -> mapped status; else INTERNAL, logged once."""

    @functools.wraps(method)
    async def wrapper(self: S, request: Req, context: Ctx) -> Resp:
        try:
            return await method(self, request, context)
        except EmulatorError as err:
            await context.abort(status_for(err), err.message, trailing_metadata_for(err))
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("rpc_internal_error", rpc=method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}")

    return wrapper


def stream_rpc(
    method: Callable[[S, Req, Ctx], AsyncGenerator[Resp, None]],
) -> Callable[[S, Req, Ctx], AsyncIterator[Resp]]:
    """`rpc` for server-streaming methods: the same mapping, before or after the first message.

    `method` may validate eagerly and return a generator; the generator is always closed
    (its `finally` runs) when the RPC ends, however it ends.
    """

    @functools.wraps(method)
    async def wrapper(self: S, request: Req, context: Ctx) -> AsyncIterator[Resp]:
        try:
            async with contextlib.aclosing(method(self, request, context)) as stream:
                async for item in stream:
                    yield item
        except EmulatorError as err:
            await context.abort(status_for(err), err.message, trailing_metadata_for(err))
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("rpc_internal_error", rpc=method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}")

    return wrapper
