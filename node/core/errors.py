"""EmulatorError hierarchy: the only exceptions the core raises.

Each KVM-level error carries the errno the kernel would return; the service
layer maps errors to gRPC status codes in one table (node/service/errors.py).
"""

from __future__ import annotations

import errno as _errno


class EmulatorError(Exception):
    """Base class. `errno_name` is the kernel errno ("ENOENT"), or None when KVM has no equivalent."""

    errno_name: str | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def errno(self) -> int | None:
        return getattr(_errno, self.errno_name) if self.errno_name else None


class NoEntry(EmulatorError):
    """-ENOENT: unknown or wrongly sized register id."""

    errno_name = "ENOENT"


class InvalidArgument(EmulatorError):
    """-EINVAL: bad value, unsupported capability or ioctl, bad reserved field."""

    errno_name = "EINVAL"


class Busy(EmulatorError):
    """-EBUSY: the VM or vCPU is in a state that forbids the call right now."""

    errno_name = "EBUSY"


class NoSuchAttr(EmulatorError):
    """-ENXIO: unknown device attribute."""

    errno_name = "ENXIO"


class AlreadyExists(EmulatorError):
    """-EEXIST: the VM id or vCPU index is taken."""

    errno_name = "EEXIST"


class NotPermitted(EmulatorError):
    """-EPERM: the kernel refuses the access outright (e.g. PTIMER_CNT write before 6.4)."""

    errno_name = "EPERM"


class VmNotFound(EmulatorError):
    """No VM with that id on this node (the VMM holds no such fd)."""


class VcpuNotFound(EmulatorError):
    """No vCPU with that index in the VM."""


class WrongClockMode(EmulatorError):
    """The operation needs the other clock mode (StepClock on a realtime node)."""


class BadRequest(EmulatorError):
    """Malformed input that never reaches a KVM ioctl (unknown enum, empty op, bad id)."""
