"""The heterogeneous host mix of a local fleet (`kvmtimer fleet`, `kvmtimer up`).

Host hardware and kernel API cycle independently, so any 3 consecutive hosts have every
API profile and include ECV2 nVHE, ECV2 VHE (CNTPOFF) and non-ECV hosts; each host booted
at a different time (its counter base). Pure data: the node's fleet process and the
controller's `up` plan the same hosts from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.core.features import DEFAULT_CNTFRQ_HZ, ApiProfile, EcvLevel, HostFeatures

HARDWARE = ((EcvLevel.CNTPOFF, False), (EcvLevel.CNTPOFF, True), (EcvLevel.NI, True), (EcvLevel.NI, False))
PROFILES = (ApiProfile.VM_COUNTER_OFFSET, ApiProfile.VCPU_OFFSETS, ApiProfile.BY_VALUE)
DAY_TICKS = 86_400 * DEFAULT_CNTFRQ_HZ


@dataclass(frozen=True, slots=True)
class FleetHost:
    """One host of the mix."""

    node_id: str  # node-<index>
    features: HostFeatures  # ECV level, VHE, kernel API at 25 MHz
    counter_base: int  # host counter at boot

    @property
    def supports_physical_offset(self) -> bool:
        return self.features.api_profile is not ApiProfile.BY_VALUE


def fleet_host(index: int, prefix: str = "node-") -> FleetHost:
    """Host number `index` (from 1): node-1 ecv2/nVHE/VM_COUNTER_OFFSET, node-2 ecv2/VHE/VCPU_OFFSETS,
    node-3 ecv0/VHE/BY_VALUE, ..."""
    if index < 1:
        raise ValueError(f"host index must be >= 1, got {index}")
    i = index - 1
    ecv, vhe = HARDWARE[i % len(HARDWARE)]
    features = HostFeatures(
        cntfrq_hz=DEFAULT_CNTFRQ_HZ, ecv=ecv, vhe=vhe, api_profile=PROFILES[i % len(PROFILES)]
    )
    return FleetHost(f"{prefix}{index}", features, (3 + 7 * i) * DAY_TICKS)
