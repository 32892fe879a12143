"""Trap policy and guest-visible values per host mode: spec §3, conformance cases 32-35.

Edge cases covered:
- compute_traps / compute_timer_map table for every (ECV, VHE) x (poffset == 0, != 0),
  including the exact CNTHCTL_EL2 value (VHE shifts EL1PCTEN/EL1PCEN by 10; ECV bit 12)
- case 32: VHE + ECV2 uses CNTPOFF: CNTPCT = H - poffset with no trap, CNTHCTL.ECV set
- case 33: VHE + ECV<2 traps CNTPCT and CNTP_* iff poffset != 0
- case 34: nVHE always traps CNTP_*, and CNTPCT iff poffset != 0 (CNTPOFF never used)
- case 35: CNTVCT / CNTV_* never trap; value H - voffset
- the same guest op sequence returns identical values in every mode at the same offsets
- traps follow poffset changes (PTIMER_CNT, counter-offset ioctl, series attribute, vCPU creation)
- BY_VALUE has no way to a non-zero poffset, so its CNTPCT never traps
- CNTVCTSS/CNTPCTSS: UNDEFINED without ECV, else same value and trap rule as the plain reads
- guest writes to counters and CNTFRQ are UNDEFINED, change nothing and never count as traps
- trap counts are per vCPU and reported by RunResult
"""

from __future__ import annotations

import pytest

from node.core.errors import InvalidArgument, NoEntry, NoSuchAttr
from node.core.features import ALL_FEATURE_COMBINATIONS, ApiProfile, EcvLevel, HostFeatures
from node.core.timer import TimerId
from node.core.traps import (
    CNTHCTL_ECV,
    CNTHCTL_EL1PCEN,
    CNTHCTL_EL1PCTEN,
    VHE_EL1_SHIFT,
    TimerMap,
    TrapConfig,
    compute_timer_map,
    compute_traps,
)
from node.core.uapi import KVM_ARM_VCPU_TIMER_CTRL, KVM_ARM_VCPU_TIMER_PHYS_OFFSET, OneReg
from node.core.vcpu import AccessResult, SysReg
from tests.unit.conftest import (
    ALL_FEATURES,
    COUNTER_OFFSET_FEATURES,
    POFFSET_FEATURES,
    feature_id,
    fingerprint,
    guest,
    make_vm,
    rd,
    set_poffset,
    wr,
)

H = 0x1000
POFF = 0x100
CNTFRQ = 25_000_000

# (ecv, vhe, poffset != 0) -> (CNTHCTL_EL2, trap CNTPCT, trap CNTP_*, uses CNTPOFF)
TRAP_TABLE: dict[tuple[int, bool, bool], tuple[int, bool, bool, bool]] = {
    (0, True, False): (0xC00, False, False, False),
    (0, True, True): (0x000, True, True, False),
    (1, True, False): (0xC00, False, False, False),
    (1, True, True): (0x000, True, True, False),
    (2, True, False): (0x1C00, False, False, True),
    (2, True, True): (0x1C00, False, False, True),
    (0, False, False): (0x1, False, True, False),
    (0, False, True): (0x0, True, True, False),
    (1, False, False): (0x1, False, True, False),
    (1, False, True): (0x0, True, True, False),
    (2, False, False): (0x1, False, True, False),
    (2, False, True): (0x0, True, True, False),
}


def expected_traps(features: HostFeatures, poffset: int) -> tuple[bool, bool]:
    """(trap CNTPCT, trap CNTP_*) as the spec states them."""
    _, cntpct, ptimer, _ = TRAP_TABLE[(int(features.ecv), features.vhe, poffset != 0)]
    return cntpct, ptimer


def test_cnthctl_bit_positions() -> None:
    assert (CNTHCTL_EL1PCTEN, CNTHCTL_EL1PCEN, CNTHCTL_ECV, VHE_EL1_SHIFT) == (1, 2, 1 << 12, 10)


@pytest.mark.parametrize("features", ALL_FEATURES)
@pytest.mark.parametrize("poffset", [0, POFF, 1 << 63])
def test_compute_traps_table(features: HostFeatures, poffset: int) -> None:
    cnthctl, cntpct, ptimer, cntpoff = TRAP_TABLE[(int(features.ecv), features.vhe, poffset != 0)]
    assert compute_traps(features, poffset) == TrapConfig(
        cnthctl_el2=cnthctl,
        trap_cntpct=cntpct,
        trap_ptimer=ptimer,
        trap_cntvct=False,
        trap_vtimer=False,
        uses_cntpoff=cntpoff,
    )


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_timer_map(features: HostFeatures) -> None:
    both = frozenset({TimerId.VTIMER, TimerId.PTIMER})
    if features.vhe:
        assert compute_timer_map(features) == TimerMap(both, frozenset())
    else:
        assert compute_timer_map(features) == TimerMap(
            frozenset({TimerId.VTIMER}), frozenset({TimerId.PTIMER})
        )


# --- one fixed op sequence in every mode --------------------------------------------

TRAP_CASES = [
    pytest.param(f, p, id=f"{feature_id(f)}-poff{p:#x}")
    for f in ALL_FEATURE_COMBINATIONS
    for p in (0, POFF)
    if p == 0 or f.supports_physical_offset
]

OPS = [
    rd(SysReg.CNTPCT_EL0),
    rd(SysReg.CNTVCT_EL0),
    wr(SysReg.CNTP_CVAL_EL0, 0xF80),
    wr(SysReg.CNTP_CTL_EL0, 0x1),
    rd(SysReg.CNTP_CTL_EL0),
    rd(SysReg.CNTP_TVAL_EL0),
    wr(SysReg.CNTP_TVAL_EL0, 0x40),
    rd(SysReg.CNTP_CVAL_EL0),
    wr(SysReg.CNTV_TVAL_EL0, 0x40),
    wr(SysReg.CNTV_CTL_EL0, 0x1),
    rd(SysReg.CNTV_CVAL_EL0),
    rd(SysReg.CNTV_TVAL_EL0),
    rd(SysReg.CNTV_CTL_EL0),
    rd(SysReg.CNTFRQ_EL0),
]


def expected_values(poffset: int) -> list[int]:
    cntpct = H - poffset
    return [
        cntpct,
        0x800,
        0xF80,
        0x1,
        0x5 if cntpct >= 0xF80 else 0x1,
        (0xF80 - cntpct) & 0xFFFF_FFFF,
        0x40,
        cntpct + 0x40,
        0x40,
        0x1,
        0x840,
        0x40,
        0x1,
        CNTFRQ,
    ]


def expected_trapped(features: HostFeatures, poffset: int) -> list[bool]:
    cntpct, ptimer = expected_traps(features, poffset)
    out = []
    for op in OPS:
        assert op.reg is not None
        if op.reg is SysReg.CNTPCT_EL0:
            out.append(cntpct)
        elif op.reg.name.startswith("CNTP_"):
            out.append(ptimer)
        else:
            out.append(False)
    return out


@pytest.mark.parametrize(("features", "poffset"), TRAP_CASES)
def test_values_identical_only_traps_differ(features: HostFeatures, poffset: int) -> None:
    host, vm = make_vm(features, h=H)
    if poffset:
        set_poffset(vm, poffset)
    vm.set_one_reg(0, OneReg.TIMER_CNT, 0x800)
    assert (vm.voffset, vm.poffset) == (H - 0x800, poffset)
    run = host.run_vcpu(vm.vm_id, 0, OPS)
    assert [r.value for r in run.results] == expected_values(poffset)
    assert not any(r.undefined for r in run.results)
    trapped = expected_trapped(features, poffset)
    assert [r.trapped for r in run.results] == trapped
    assert run.trap_count == vm.vcpu(0).trap_count == sum(trapped)
    cnthctl, *_ = TRAP_TABLE[(int(features.ecv), features.vhe, poffset != 0)]
    assert vm.traps.cnthctl_el2 == cnthctl
    assert run.host_counter == H


# --- the spec's cases verbatim ----------------------------------------------------------

VHE_ECV2_POFFSET = [
    pytest.param(HostFeatures(ecv=EcvLevel.CNTPOFF, vhe=True, api_profile=p), id=p.name.lower())
    for p in (ApiProfile.VCPU_OFFSETS, ApiProfile.VM_COUNTER_OFFSET)
]


@pytest.mark.parametrize("features", VHE_ECV2_POFFSET)
def test_case32_vhe_ecv2_uses_cntpoff(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=H)
    set_poffset(vm, POFF)
    results = guest(host, vm, 0, rd(SysReg.CNTPCT_EL0), rd(SysReg.CNTP_CTL_EL0), wr(SysReg.CNTP_CVAL_EL0, 5))
    assert results[0] == AccessResult(0xF00, trapped=False)
    assert not any(r.trapped for r in results)
    assert vm.vcpu(0).trap_count == 0
    assert vm.traps.cnthctl_el2 & (1 << 12)
    assert vm.traps.uses_cntpoff is True


def test_case32_via_the_counter_offset_ioctl() -> None:
    host, vm = make_vm(HostFeatures(ecv=EcvLevel.CNTPOFF, vhe=True), h=H)
    vm.set_counter_offset(POFF, 0)
    results = guest(host, vm, 0, rd(SysReg.CNTPCT_EL0), rd(SysReg.CNTVCT_EL0))
    assert [r.value for r in results] == [0xF00, 0xF00]
    assert vm.vcpu(0).trap_count == 0
    assert vm.traps.cnthctl_el2 == 0x1C00


@pytest.mark.parametrize("ecv", [EcvLevel.NI, EcvLevel.IMP])
@pytest.mark.parametrize("profile", [ApiProfile.VCPU_OFFSETS, ApiProfile.VM_COUNTER_OFFSET])
def test_case33_vhe_without_cntpoff_traps_iff_poffset(ecv: EcvLevel, profile: ApiProfile) -> None:
    host, vm = make_vm(HostFeatures(ecv=ecv, vhe=True, api_profile=profile), h=H)
    ptimer_ops = (
        rd(SysReg.CNTPCT_EL0),
        rd(SysReg.CNTP_CTL_EL0),
        rd(SysReg.CNTP_CVAL_EL0),
        rd(SysReg.CNTP_TVAL_EL0),
        wr(SysReg.CNTP_CTL_EL0, 0),
        wr(SysReg.CNTP_CVAL_EL0, 0),
        wr(SysReg.CNTP_TVAL_EL0, 0),
    )
    results = guest(host, vm, 0, *ptimer_ops)
    assert [r.trapped for r in results] == [False] * 7
    assert results[0].value == H
    assert vm.vcpu(0).trap_count == 0
    set_poffset(vm, POFF)
    results = guest(host, vm, 0, *ptimer_ops)
    assert [r.trapped for r in results] == [True] * 7
    assert results[0].value == H - POFF
    assert vm.vcpu(0).trap_count == 7


@pytest.mark.parametrize("ecv", list(EcvLevel))
@pytest.mark.parametrize("profile", list(ApiProfile))
def test_case34_nvhe_always_traps_the_ptimer(ecv: EcvLevel, profile: ApiProfile) -> None:
    features = HostFeatures(ecv=ecv, vhe=False, api_profile=profile)
    host, vm = make_vm(features, h=H)
    timer_ops = (rd(SysReg.CNTP_CTL_EL0), rd(SysReg.CNTP_CVAL_EL0), wr(SysReg.CNTP_TVAL_EL0, 9))
    results = guest(host, vm, 0, rd(SysReg.CNTPCT_EL0), *timer_ops)
    assert [r.trapped for r in results] == [False, True, True, True]
    assert results[0].value == H
    assert vm.traps.uses_cntpoff is False
    if not features.supports_physical_offset:
        return
    set_poffset(vm, POFF)
    results = guest(host, vm, 0, rd(SysReg.CNTPCT_EL0), *timer_ops)
    assert [r.trapped for r in results] == [True, True, True, True]
    assert results[0].value == 0xF00  # the value of case 32
    assert vm.vcpu(0).trap_count == 7


@pytest.mark.parametrize(("features", "poffset"), TRAP_CASES)
def test_case35_virtual_counter_never_traps(features: HostFeatures, poffset: int) -> None:
    host, vm = make_vm(features, h=H)
    if poffset:
        set_poffset(vm, poffset)
    vm.set_one_reg(0, OneReg.TIMER_CNT, 0x123)
    voffset = vm.voffset
    assert voffset == H - 0x123
    host.step_clock(0x10)
    results = guest(
        host,
        vm,
        0,
        rd(SysReg.CNTVCT_EL0),
        rd(SysReg.CNTV_CTL_EL0),
        wr(SysReg.CNTV_CVAL_EL0, 1),
        rd(SysReg.CNTV_TVAL_EL0),
    )
    assert results[0] == AccessResult(H + 0x10 - voffset, trapped=False)
    assert not any(r.trapped for r in results)
    assert vm.traps.trap_cntvct is False and vm.traps.trap_vtimer is False


# --- traps follow poffset ----------------------------------------------------------------


@pytest.mark.parametrize("features", COUNTER_OFFSET_FEATURES)
def test_traps_follow_ptimer_cnt_and_ioctl(features: HostFeatures) -> None:
    _, vm = make_vm(features, h=H)
    vm.set_one_reg(0, OneReg.PTIMER_CNT, H - POFF)
    assert (vm.traps.trap_cntpct, vm.traps.trap_ptimer) == expected_traps(features, POFF)
    vm.set_one_reg(0, OneReg.PTIMER_CNT, H)
    assert vm.poffset == 0
    assert vm.traps == compute_traps(features, 0)
    vm.set_counter_offset(POFF, 0)
    assert vm.traps == compute_traps(features, POFF)
    vm.set_counter_offset(0, 0)
    assert vm.traps == compute_traps(features, 0)


@pytest.mark.parametrize("features", POFFSET_FEATURES)
def test_vcpu_creation_turns_poffset_traps_off_again(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=H)
    set_poffset(vm, POFF)
    assert vm.traps == compute_traps(features, POFF)
    vm.create_vcpu(1)
    assert vm.traps == compute_traps(features, 0)
    results = guest(host, vm, 1, rd(SysReg.CNTPCT_EL0))
    assert results[0] == AccessResult(H, trapped=False)


def test_series_attribute_back_to_zero_stops_trapping() -> None:
    host, vm = make_vm(HostFeatures(ecv=EcvLevel.IMP, vhe=True, api_profile=ApiProfile.VCPU_OFFSETS), h=H)
    vm.set_attr(0, KVM_ARM_VCPU_TIMER_CTRL, KVM_ARM_VCPU_TIMER_PHYS_OFFSET, POFF)
    assert guest(host, vm, 0, rd(SysReg.CNTPCT_EL0))[0] == AccessResult(H - POFF, trapped=True)
    vm.set_attr(0, KVM_ARM_VCPU_TIMER_CTRL, KVM_ARM_VCPU_TIMER_PHYS_OFFSET, 0)
    assert guest(host, vm, 0, rd(SysReg.CNTPCT_EL0))[0] == AccessResult(H, trapped=False)
    assert vm.vcpu(0).trap_count == 1


@pytest.mark.parametrize("ecv", list(EcvLevel))
@pytest.mark.parametrize("vhe", [False, True])
def test_by_value_kernel_cannot_get_a_physical_offset(ecv: EcvLevel, vhe: bool) -> None:
    features = HostFeatures(ecv=ecv, vhe=vhe, api_profile=ApiProfile.BY_VALUE)
    host, vm = make_vm(features, h=H)
    before = fingerprint(vm)
    with pytest.raises(NoEntry):
        vm.set_one_reg(0, OneReg.PTIMER_CNT, 0)
    with pytest.raises(NoSuchAttr):
        vm.get_attr(0, KVM_ARM_VCPU_TIMER_CTRL, KVM_ARM_VCPU_TIMER_PHYS_OFFSET)
    with pytest.raises(InvalidArgument):
        vm.set_counter_offset(POFF, 0)
    assert fingerprint(vm) == before
    assert vm.poffset == 0
    assert guest(host, vm, 0, rd(SysReg.CNTPCT_EL0))[0] == AccessResult(H, trapped=False)


# --- self-synchronised views, undefined accesses, per-vCPU counts ---------------------


@pytest.mark.parametrize(("features", "poffset"), TRAP_CASES)
def test_self_synchronised_counter_views(features: HostFeatures, poffset: int) -> None:
    host, vm = make_vm(features, h=H)
    if poffset:
        set_poffset(vm, poffset)
    vm.set_one_reg(0, OneReg.TIMER_CNT, 0x800)
    results = guest(host, vm, 0, rd(SysReg.CNTVCTSS_EL0), rd(SysReg.CNTPCTSS_EL0))
    if features.ecv == EcvLevel.NI:
        assert results == (AccessResult(0, undefined=True), AccessResult(0, undefined=True))
        assert vm.vcpu(0).trap_count == 0
    else:
        trap_cntpct, _ = expected_traps(features, poffset)
        assert results == (AccessResult(0x800), AccessResult(H - poffset, trapped=trap_cntpct))
        assert vm.vcpu(0).trap_count == int(trap_cntpct)


@pytest.mark.parametrize(("features", "poffset"), TRAP_CASES)
def test_guest_writes_to_counters_are_undefined(features: HostFeatures, poffset: int) -> None:
    host, vm = make_vm(features, h=H)
    if poffset:
        set_poffset(vm, poffset)
    host.run_vcpu(vm.vm_id, 0, [])
    before = fingerprint(vm)
    counters = [
        SysReg.CNTFRQ_EL0,
        SysReg.CNTVCT_EL0,
        SysReg.CNTPCT_EL0,
        SysReg.CNTVCTSS_EL0,
        SysReg.CNTPCTSS_EL0,
    ]
    results = guest(host, vm, 0, *(wr(reg, 5) for reg in counters))
    assert results == tuple(AccessResult(5, undefined=True) for _ in counters)
    assert fingerprint(vm) == before
    assert guest(host, vm, 0, rd(SysReg.CNTFRQ_EL0))[0] == AccessResult(CNTFRQ)


def test_trap_counts_are_per_vcpu() -> None:
    host, vm = make_vm(HostFeatures(vhe=False), h=H, vcpus=2)
    assert host.run_vcpu(vm.vm_id, 0, [rd(SysReg.CNTP_CTL_EL0)] * 3).trap_count == 3
    assert host.run_vcpu(vm.vm_id, 1, [rd(SysReg.CNTP_CVAL_EL0)]).trap_count == 1
    assert host.run_vcpu(vm.vm_id, 0, [rd(SysReg.CNTV_CTL_EL0)]).trap_count == 3
    assert (vm.vcpu(0).trap_count, vm.vcpu(1).trap_count) == (3, 1)
