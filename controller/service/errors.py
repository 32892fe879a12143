"""The single ControllerError -> gRPC status table, and the unary RPC wrapper using it."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import structlog

from controller.core.errors import (
    Aborted,
    AlreadyExists,
    ControllerError,
    FailedPrecondition,
    InvalidArgument,
    NodeCallError,
    NotFound,
    Unavailable,
)

STATUS: dict[type[ControllerError], grpc.StatusCode] = {
    NotFound: grpc.StatusCode.NOT_FOUND,
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    Aborted: grpc.StatusCode.ABORTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    NodeCallError: grpc.StatusCode.FAILED_PRECONDITION,
}

log = structlog.get_logger("kvmtimer.controller")
Ctx = grpc.aio.ServicerContext[Any, Any]
S = TypeVar("S")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


def status_for(error: ControllerError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return grpc.StatusCode.INTERNAL


def rpc(
    method: Callable[[S, Req, Ctx], Awaitable[Resp]],
) -> Callable[[S, Req, Ctx], Awaitable[Resp]]:
    """ControllerError -> mapped status; anything unexpected -> INTERNAL, logged once with a traceback."""

    @functools.wraps(method)
    async def wrapper(self: S, request: Req, context: Ctx) -> Resp:
        try:
            return await method(self, request, context)
        except ControllerError as err:
            await context.abort(status_for(err), err.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("rpc_internal_error", rpc=method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}")

    return wrapper
