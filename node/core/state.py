"""Frozen snapshot data of a VM's timer state: the migration payload.

Only guest-visible state and VM configuration are captured; host statistics
(trap counts) and run history belong to the host, not to the guest.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.core.timer import TimerId


@dataclass(frozen=True, slots=True)
class TimerState:
    """One timer's guest registers."""

    timer_id: TimerId  # which timer
    ctl: int  # stored CTL (ISTATUS not included)
    cval: int  # compare value, in the timer's counter domain


@dataclass(frozen=True, slots=True)
class VcpuState:
    """One vCPU's timers."""

    index: int  # vCPU index
    timers: tuple[TimerState, ...]  # ordered by TimerId


@dataclass(frozen=True, slots=True)
class VmState:
    """Everything needed to recreate a VM's timers, plus the (H, realtime) anchor."""

    vm_id: str  # VM name on its node
    cntfrq_hz: int  # counter frequency the guest calibrated against
    userspace_irqchip: bool  # no in-kernel vGIC
    voffset: int  # total virtual offset from the host counter
    poffset: int  # physical offset from the host counter
    counter_offset_set: bool  # KVM_ARM_SET_COUNTER_OFFSET has been used
    vtimer_offset_enabled: bool  # KVM_CAP_ARM_VTIMER_OFFSET enabled (2021 series)
    ppis: tuple[int, ...]  # timer PPI INTIDs, indexed by TimerId
    vcpus: tuple[VcpuState, ...]  # ordered by index
    host_counter: int  # host counter when the snapshot was taken
    realtime_ns: int  # host CLOCK_REALTIME sampled with host_counter
