"""The single ControllerError -> gRPC status table, and the unary RPC wrapper using it."""

from __future__ import annotations

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
from node.runtime.rpc import Ctx, RpcErrors

__all__ = ["STATUS", "Ctx", "rpc", "status_for"]

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


def status_for(error: ControllerError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return grpc.StatusCode.INTERNAL


def _describe(error: ControllerError) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    return status_for(error), error.message, ()


# `@rpc` wraps every unary Controller method.
rpc = RpcErrors(ControllerError, _describe, log)
