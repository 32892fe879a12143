"""A vCPU's timers and the guest's view of the timer system registers."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from node.core.timer import DEFAULT_PPI, TimerContext, TimerId, TimerReg


class SysReg(IntEnum):
    """Guest-visible timer system registers; numbers match proto `SysReg`."""

    CNTFRQ_EL0 = 1  # counter frequency
    CNTVCT_EL0 = 2  # virtual count
    CNTPCT_EL0 = 3  # physical count
    CNTVCTSS_EL0 = 4  # self-synchronised virtual count (FEAT_ECV)
    CNTPCTSS_EL0 = 5  # self-synchronised physical count (FEAT_ECV)
    CNTV_CTL_EL0 = 6  # virtual timer control
    CNTV_CVAL_EL0 = 7  # virtual timer compare value
    CNTV_TVAL_EL0 = 8  # virtual timer value (signed 32-bit view)
    CNTP_CTL_EL0 = 9  # physical timer control
    CNTP_CVAL_EL0 = 10  # physical timer compare value
    CNTP_TVAL_EL0 = 11  # physical timer value (signed 32-bit view)


class AccessKind(IntEnum):
    """What a guest operation does."""

    READ = 1  # MRS
    WRITE = 2  # MSR
    WAIT = 3  # idle for some host ticks


@dataclass(frozen=True, slots=True)
class GuestOp:
    """One guest instruction (or idle period) inside a KVM_RUN."""

    kind: AccessKind  # read, write or wait
    reg: SysReg | None = None  # register for READ/WRITE
    value: int = 0  # value for WRITE, ticks for WAIT


@dataclass(frozen=True, slots=True)
class AccessResult:
    """Outcome of one guest access."""

    value: int  # value read / written, or host counter after a wait
    trapped: bool = False  # exited to the hypervisor and was emulated
    undefined: bool = False  # the instruction is UNDEFINED here (no state change)


COUNTER_REGS = frozenset(
    {SysReg.CNTFRQ_EL0, SysReg.CNTVCT_EL0, SysReg.CNTPCT_EL0, SysReg.CNTVCTSS_EL0, SysReg.CNTPCTSS_EL0}
)
SELF_SYNC_REGS = frozenset({SysReg.CNTVCTSS_EL0, SysReg.CNTPCTSS_EL0})
# (timer, register) behind each timer system register.
TIMER_SYSREGS: dict[SysReg, tuple[TimerId, TimerReg]] = {
    SysReg.CNTV_CTL_EL0: (TimerId.VTIMER, TimerReg.CTL),
    SysReg.CNTV_CVAL_EL0: (TimerId.VTIMER, TimerReg.CVAL),
    SysReg.CNTV_TVAL_EL0: (TimerId.VTIMER, TimerReg.TVAL),
    SysReg.CNTP_CTL_EL0: (TimerId.PTIMER, TimerReg.CTL),
    SysReg.CNTP_CVAL_EL0: (TimerId.PTIMER, TimerReg.CVAL),
    SysReg.CNTP_TVAL_EL0: (TimerId.PTIMER, TimerReg.TVAL),
}


def _new_timers() -> list[TimerContext]:
    return [TimerContext(t) for t in TimerId]


def _default_ppis() -> list[int]:
    return [DEFAULT_PPI[t] for t in TimerId]


@dataclass(slots=True)
class Vcpu:
    """Mutable vCPU model: timer contexts (indexed by TimerId) and host-side counters."""

    index: int  # vCPU index
    timers: list[TimerContext] = field(default_factory=_new_timers)  # by TimerId
    ppis: list[int] = field(default_factory=_default_ppis)  # timer PPI INTIDs by TimerId (irq.irq)
    trap_count: int = 0  # timer accesses emulated at EL2
    has_run: bool = False  # completed a first KVM_RUN
    in_run: bool = False  # inside KVM_RUN right now (holds the vCPU mutex)

    def timer(self, timer_id: TimerId) -> TimerContext:
        return self.timers[timer_id]

    def reset(self) -> None:
        """KVM_ARM_VCPU_INIT: CTL := 0 for every timer; CVAL and offsets untouched."""
        for ctx in self.timers:
            ctx.ctl = 0
