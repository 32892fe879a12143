"""The single table from core errors to gRPC status codes.

KVM-level errors carry the kernel errno; it travels to the client as the
trailing metadata key `kvm-errno` next to the mapped status code.
"""

from __future__ import annotations

import grpc
import structlog

from node.core.errors import BadRequest, EmulatorError, VcpuNotFound, VmNotFound, WrongClockMode
from node.runtime.rpc import Ctx, RpcErrors

__all__ = ["ERRNO_METADATA_KEY", "Ctx", "rpc", "status_for", "stream_rpc", "trailing_metadata_for"]

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


def _describe(error: EmulatorError) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    return status_for(error), error.message, trailing_metadata_for(error)


# `@rpc` for unary methods, `@stream_rpc` for server-streaming ones.
rpc = RpcErrors(EmulatorError, _describe, log)
stream_rpc = rpc.stream
