"""Generic timer contexts and the pure rules of CTL/CVAL/TVAL (DDI0487 D11.2.4).

All counter arithmetic is modulo 2^64. TVAL is the signed 32-bit view of
`CVAL - now`; writing TVAL sets `CVAL = now + sign_extend32(value)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from node.core.clock import U64_MASK

CTL_ENABLE = 1 << 0  # timer enabled
CTL_IMASK = 1 << 1  # interrupt masked
CTL_ISTATUS = 1 << 2  # condition met (read-only)
U32_MASK = 0xFFFF_FFFF


class TimerId(IntEnum):
    """kernel enum kvm_arch_timers; numbers match proto `TimerId`."""

    VTIMER = 0  # EL1 virtual timer (CNTV_*)
    PTIMER = 1  # EL1 physical timer (CNTP_*)
    HVTIMER = 2  # EL2 virtual timer (NV only)
    HPTIMER = 3  # EL2 physical timer (NV only)


class TimerReg(IntEnum):
    """Registers of one timer as KVM's kvm_arm_timer_read/write name them."""

    CTL = 0  # CNTx_CTL
    CVAL = 1  # CNTx_CVAL
    TVAL = 2  # CNTx_TVAL
    CNT = 3  # the timer's counter view


# Default PPIs (arch_timer.c default_ppi[]).
DEFAULT_PPI: dict[TimerId, int] = {
    TimerId.VTIMER: 27,
    TimerId.PTIMER: 30,
    TimerId.HVTIMER: 28,
    TimerId.HPTIMER: 26,
}


@dataclass(frozen=True, slots=True)
class TimerOffset:
    """struct arch_timer_offset: a VM-wide part plus a vCPU part (missing part = 0)."""

    vm: int = 0  # VM-wide offset (voffset or poffset)
    vcpu: int = 0  # per-vCPU part (NV guest CNTVOFF_EL2; 0 otherwise)

    def total(self) -> int:
        return (self.vm + self.vcpu) & U64_MASK


@dataclass(slots=True)
class TimerContext:
    """struct arch_timer_context: the guest-owned registers of one timer."""

    timer_id: TimerId  # which timer
    ctl: int = 0  # stored CTL, ISTATUS never stored
    cval: int = 0  # compare value in the timer's own counter domain


def sign_extend32(value: int) -> int:
    value &= U32_MASK
    return value - (1 << 32) if value & 0x8000_0000 else value


def condition_met(cval: int, now: int) -> bool:
    """The timer condition: now >= CVAL, unsigned 64-bit compare."""
    return now >= cval


def read_ctl(ctl: int, cval: int, now: int) -> int:
    """CTL as read: ISTATUS is set whenever the condition is met, even with ENABLE=0.

    The architecture makes ISTATUS UNKNOWN when disabled; KVM's read_timer_ctl() picks "set".
    """
    return ctl | CTL_ISTATUS if condition_met(cval, now) else ctl


def store_ctl(value: int) -> int:
    """CTL as stored on write: 32-bit, ISTATUS dropped (kvm_arm_timer_write)."""
    return value & U32_MASK & ~CTL_ISTATUS


def should_fire(ctl: int, cval: int, now: int) -> bool:
    """Output line level: ENABLE && !IMASK && condition met (a level, never latched)."""
    return (ctl & (CTL_ENABLE | CTL_IMASK)) == CTL_ENABLE and condition_met(cval, now)


def tval_read(cval: int, now: int) -> int:
    """TVAL as read: the low 32 bits of CVAL - now."""
    return (cval - now) & U32_MASK


def tval_write(value: int, now: int) -> int:
    """New CVAL for a TVAL write of `value` at counter `now`."""
    return (now + sign_extend32(value)) & U64_MASK


def ticks_until_fire(ctl: int, cval: int, now: int) -> int | None:
    """Ticks until the line rises (0 = already high); None if it never will (disabled/masked)."""
    if (ctl & (CTL_ENABLE | CTL_IMASK)) != CTL_ENABLE:
        return None
    return 0 if condition_met(cval, now) else cval - now


def timer_read(ctx: TimerContext, reg: TimerReg, now: int) -> int:
    """kvm_arm_timer_read(): one register of a timer whose counter reads `now`.

    The one place a register name becomes a field: ONE_REG reads, batched reads and guest
    MRS all come here (node.core.vm).
    """
    if reg is TimerReg.CTL:
        return read_ctl(ctx.ctl, ctx.cval, now)
    if reg is TimerReg.CVAL:
        return ctx.cval
    if reg is TimerReg.TVAL:
        return tval_read(ctx.cval, now)
    return now  # TimerReg.CNT


def timer_write(ctx: TimerContext, reg: TimerReg, value: int, now: int) -> None:
    """kvm_arm_timer_write(): CTL, CVAL or TVAL of a timer whose counter reads `now`.

    Precondition: `reg` is not CNT (a counter write moves an offset, which the VM owns).
    """
    if reg is TimerReg.CTL:
        ctx.ctl = store_ctl(value)
    elif reg is TimerReg.CVAL:
        ctx.cval = value & U64_MASK
    elif reg is TimerReg.TVAL:
        ctx.cval = tval_write(value, now)
    else:
        raise ValueError("a counter write is an offset change (Vm), not a timer register write")
