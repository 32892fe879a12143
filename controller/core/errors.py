"""ControllerError hierarchy: the only exceptions controller core code raises.

controller/service/errors.py maps each class to one gRPC status code.
"""

from __future__ import annotations


class ControllerError(Exception):
    """Base class; `message` is what the client sees."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(ControllerError):
    """Unknown node, guest or migration."""


class InvalidArgument(ControllerError):
    """Malformed request."""


class FailedPrecondition(ControllerError):
    """The request is well formed but the cluster's state forbids it (incompatible nodes, node down)."""


class AlreadyExists(ControllerError):
    """Id taken (guest id, or a migration id reused with different parameters)."""


class Aborted(ControllerError):
    """Conflicts with an operation in flight (the guest is already migrating)."""


class Unavailable(ControllerError):
    """A node could not be reached."""


class NodeCallError(ControllerError):
    """A node RPC failed; carries the node's status code name and kvm-errno."""

    def __init__(self, node_id: str, rpc: str, code: str, errno_name: str | None, detail: str) -> None:
        errno_part = f" [{errno_name}]" if errno_name else ""
        super().__init__(f"node {node_id}: {rpc} failed: {code}{errno_part}: {detail}")
        self.node_id = node_id
        self.rpc = rpc
        self.code = code
        self.errno_name = errno_name
        self.detail = detail

    @property
    def unreachable(self) -> bool:
        return self.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED")

    @property
    def never_sent(self) -> bool:
        """No connection to the node could be made, so it never received the call (gRPC's
        UNAVAILABLE "failed to connect"; a connection lost mid-call says otherwise)."""
        return self.code == "UNAVAILABLE" and "failed to connect" in self.detail.lower()
