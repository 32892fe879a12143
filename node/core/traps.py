"""Which timer accesses the hardware serves and which trap to the hypervisor.

Copies the model of upstream `get_timer_map()` / `timer_set_traps()`
(arch/arm64/kvm/arch_timer.c, Linux 6.4+) and nVHE `__timer_enable_traps()`
(arch/arm64/kvm/hyp/nvhe/timer-sr.c): start from "trap nothing", add traps
rule by rule, then turn them into CNTHCTL_EL2 bits in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.core.features import HostFeatures
from node.core.timer import TimerId

# CNTHCTL_EL2 bits (E2H=0 layout; DDI0487 D19.11). A cleared enable bit traps.
CNTHCTL_EL1PCTEN = 1 << 0  # EL1/EL0 may read CNTPCT_EL0
CNTHCTL_EL1PCEN = 1 << 1  # EL1/EL0 may access CNTP_CTL/CVAL/TVAL
CNTHCTL_ECV = 1 << 12  # enable CNTPOFF_EL2 (FEAT_ECV, ECV >= 2)
CNTHCTL_EL1TVT = 1 << 13  # trap EL0/EL1 virtual timer accesses
CNTHCTL_EL1TVCT = 1 << 14  # trap EL0/EL1 virtual counter reads
# With E2H=1 (VHE) EL1PCTEN/EL1PCEN sit 10 bits higher; KVM shifts them.
VHE_EL1_SHIFT = 10


@dataclass(frozen=True, slots=True)
class TimerMap:
    """Which EL1 timers run directly on the hardware and which KVM emulates."""

    direct: frozenset[TimerId]  # backed by the hardware timer
    emulated: frozenset[TimerId]  # backed by a host hrtimer


@dataclass(frozen=True, slots=True)
class TrapConfig:
    """Result of the trap policy for one vCPU at the current offsets."""

    cnthctl_el2: int  # value KVM programs while the vCPU runs
    trap_cntpct: bool  # CNTPCT_EL0 / CNTPCTSS_EL0 reads exit to EL2
    trap_ptimer: bool  # CNTP_CTL/CVAL/TVAL accesses exit to EL2
    trap_cntvct: bool  # CNTVCT_EL0 reads exit (broken-CNTVOFF erratum only; not modelled)
    trap_vtimer: bool  # CNTV_* accesses exit (same erratum; not modelled)
    uses_cntpoff: bool  # CNTPOFF_EL2 carries the physical offset


def compute_timer_map(features: HostFeatures) -> TimerMap:
    """get_timer_map() without NV: VHE runs both EL1 timers on hardware, nVHE emulates the ptimer.

    Under nVHE the host kernel owns the EL1 physical timer, so the guest's is an hrtimer.
    """
    if features.vhe:
        return TimerMap(frozenset({TimerId.VTIMER, TimerId.PTIMER}), frozenset())
    return TimerMap(frozenset({TimerId.VTIMER}), frozenset({TimerId.PTIMER}))


def compute_traps(features: HostFeatures, poffset: int) -> TrapConfig:
    """Trap configuration for a vCPU of a VM whose physical offset is `poffset`."""
    timer_map = compute_timer_map(features)
    trap_ptimer = trap_cntpct = False
    uses_cntpoff = features.has_cntpoff

    if features.vhe:
        # Either CNTPOFF exists or the offset is 0: the guest uses the hardware freely.
        # Otherwise trap counter and timer accesses, and correct them by the offset.
        if not uses_cntpoff and poffset != 0:
            trap_ptimer = trap_cntpct = True
    else:
        # nVHE: the physical timer is always emulated; the physical counter is direct
        # only while there is no offset to apply (CNTPOFF is never used without VHE).
        trap_ptimer = TimerId.PTIMER in timer_map.emulated
        trap_cntpct = poffset != 0

    return TrapConfig(
        cnthctl_el2=_cnthctl(features, uses_cntpoff, trap_cntpct=trap_cntpct, trap_ptimer=trap_ptimer),
        trap_cntpct=trap_cntpct,
        trap_ptimer=trap_ptimer,
        trap_cntvct=False,
        trap_vtimer=False,
        uses_cntpoff=uses_cntpoff,
    )


def _cnthctl(features: HostFeatures, uses_cntpoff: bool, *, trap_cntpct: bool, trap_ptimer: bool) -> int:
    """The one place trap decisions become CNTHCTL_EL2 bits."""
    shift = VHE_EL1_SHIFT if features.vhe else 0
    value = 0
    if not trap_cntpct:
        value |= CNTHCTL_EL1PCTEN << shift
    if not trap_ptimer:
        value |= CNTHCTL_EL1PCEN << shift
    if uses_cntpoff:
        value |= CNTHCTL_ECV
    return value
