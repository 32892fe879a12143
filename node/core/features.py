"""Host features of one emulated arm64 host and the predicates derived from them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from node.core.errors import InvalidArgument

DEFAULT_CNTFRQ_HZ = 25_000_000
# A counter faster than 1 GHz is outside what the architecture allows since Armv8.6 fixes 1 GHz.
MAX_CNTFRQ_HZ = 1_000_000_000


class ApiProfile(IntEnum):
    """Kernel timer API generation; numbers match proto `ApiProfile`."""

    BY_VALUE = 1  # pre-series kernel: by-value KVM_REG_ARM_TIMER_CNT only
    VCPU_OFFSETS = 2  # 2021 series: CNTVOFF ONE_REG + physical-offset vCPU attribute
    VM_COUNTER_OFFSET = 3  # Linux 6.4+: KVM_ARM_SET_COUNTER_OFFSET


class ClockMode(IntEnum):
    """How the host counter advances; numbers match proto `ClockMode`."""

    REALTIME = 1  # follows the monotonic clock
    SIMULATED = 2  # moves only when told


class EcvLevel(IntEnum):
    """ID_AA64MMFR0_EL1.ECV, bits [63:60] (DDI0487 D19.2)."""

    NI = 0  # not implemented
    IMP = 1  # self-synchronising views, extra CNTHCTL_EL2 traps
    CNTPOFF = 2  # adds CNTPOFF_EL2


@dataclass(frozen=True, slots=True)
class HostFeatures:
    """What the emulated host offers; immutable for the life of a node."""

    cntfrq_hz: int = DEFAULT_CNTFRQ_HZ  # CNTFRQ_EL0
    ecv: EcvLevel = EcvLevel.NI  # ID_AA64MMFR0_EL1.ECV
    vhe: bool = True  # host kernel runs at EL2 (HCR_EL2.E2H=1)
    api_profile: ApiProfile = ApiProfile.VM_COUNTER_OFFSET  # kernel timer API
    nv: bool = False  # nested virt: EL2 timers' PPI attributes exist

    def __post_init__(self) -> None:
        if not 1 <= self.cntfrq_hz <= MAX_CNTFRQ_HZ:
            raise InvalidArgument(f"cntfrq_hz must be in 1..{MAX_CNTFRQ_HZ}, got {self.cntfrq_hz}")
        if self.ecv not in (0, 1, 2):
            raise InvalidArgument(f"ecv must be 0, 1 or 2, got {self.ecv}")

    @property
    def has_cntpoff(self) -> bool:
        """CNTPOFF_EL2 carries the physical offset: VHE and ECV >= 2.

        Upstream `has_cntpoff()` (include/kvm/arm_arch_timer.h) and the series'
        own helper both require VHE; the v8 cover letter's "only if !VHE" is wrong.
        """
        return self.vhe and self.ecv >= EcvLevel.CNTPOFF

    @property
    def has_counter_offset_cap(self) -> bool:
        """KVM_CAP_COUNTER_OFFSET / KVM_ARM_SET_COUNTER_OFFSET exist (6.4+)."""
        return self.api_profile is ApiProfile.VM_COUNTER_OFFSET

    @property
    def has_vcpu_offsets(self) -> bool:
        """The series' CNTVOFF ONE_REG and KVM_ARM_VCPU_TIMER_PHYS_OFFSET attribute exist."""
        return self.api_profile is ApiProfile.VCPU_OFFSETS

    @property
    def has_ptimer_cnt_write(self) -> bool:
        """A PTIMER_CNT ONE_REG write moves the physical offset (6.4+ only)."""
        return self.api_profile is ApiProfile.VM_COUNTER_OFFSET

    @property
    def has_ptimer_regs(self) -> bool:
        """PTIMER_CTL/CVAL/CNT are ONE_REG registers (6.4+, Linux 680232a94c12); before, ENOENT."""
        return self.api_profile is ApiProfile.VM_COUNTER_OFFSET

    @property
    def has_vm_wide_ppis(self) -> bool:
        """Timer PPIs live VM-wide and freeze at the VM's first run (6.4+); before, per vCPU."""
        return self.api_profile is ApiProfile.VM_COUNTER_OFFSET

    @property
    def supports_physical_offset(self) -> bool:
        """Any way at all to give the guest a non-zero physical offset."""
        return self.api_profile is not ApiProfile.BY_VALUE


ALL_FEATURE_COMBINATIONS: tuple[HostFeatures, ...] = tuple(
    HostFeatures(ecv=EcvLevel(ecv), vhe=vhe, api_profile=profile)
    for ecv in (0, 1, 2)
    for vhe in (False, True)
    for profile in ApiProfile
)
