"""Which timer ids each kernel exposes: spec §2.1 table, cases 4, 41 and 42.

Edge cases covered, on every profile x ECV x VHE combination (the series before and after
KVM_ENABLE_CAP(KVM_CAP_ARM_VTIMER_OFFSET)):
- KVM_GET_REG_LIST's timer ids and their order (row by row of the §2.1 table)
- PTIMER_CTL/CVAL/CNT GET and SET: value/accepted on 6.4+, ENOENT before (cap or not), and
  the refused call changes nothing, with timers armed and offsets non-zero
- TIMER_OFFSET GET and SET: ENOENT except on the series once its cap is on
- case 42 (get-reg-list selftest): every listed id reads and writes back the value read,
  and with no host tick in between every value reads back unchanged — also with the
  counter near the 2^64 wrap and with ISTATUS set
- the guest's own CNTPCT_EL0 and physical timer work on every profile (case 4)
"""

from __future__ import annotations

import pytest

from node.core.errors import NoEntry
from node.core.features import ALL_FEATURE_COMBINATIONS, ApiProfile, HostFeatures
from node.core.timer import CTL_ENABLE, TimerId
from node.core.uapi import PTIMER_REGS, VTIMER_REGS, Cap, OneReg, timer_reg_list
from node.core.vcpu import SysReg
from node.core.vm import Vm
from tests.unit.conftest import feature_id, fingerprint, guest_values, make_vm, rd, wait, wr

U64 = 1 << 64
CASES = [
    pytest.param(f, cap, id=feature_id(f) + ("-cap" if cap else ""))
    for f in ALL_FEATURE_COMBINATIONS
    for cap in ((False, True) if f.api_profile is ApiProfile.VCPU_OFFSETS else (False,))
]
# §2.1 table, written out (not derived from the code under test).
EXPECTED_LIST = {
    (ApiProfile.BY_VALUE, False): [0x6030_0000_0013_DF19, 0x6030_0000_0013_DF1A, 0x6030_0000_0013_DF02],
    (ApiProfile.VCPU_OFFSETS, False): [0x6030_0000_0013_DF19, 0x6030_0000_0013_DF1A, 0x6030_0000_0013_DF02],
    (ApiProfile.VCPU_OFFSETS, True): [
        0x6030_0000_0013_DF19,
        0x6030_0000_0013_DF1A,
        0x6030_0000_0013_DF02,
        0x6030_0000_0013_E703,
    ],
    (ApiProfile.VM_COUNTER_OFFSET, False): [
        0x6030_0000_0013_DF19,
        0x6030_0000_0013_DF1A,
        0x6030_0000_0013_DF02,
        0x6030_0000_0013_DF11,
        0x6030_0000_0013_DF01,
        0x6030_0000_0013_DF12,
    ],
}
PTIMER_IDS = (0x6030_0000_0013_DF11, 0x6030_0000_0013_DF12, 0x6030_0000_0013_DF01)


def busy_vm(features: HostFeatures, cap: bool, h: int = 10_000) -> Vm:
    """Two vCPUs with both timers armed by the guest and the virtual counter moved."""
    host, vm = make_vm(features, h=h, vcpus=2)
    if cap:
        vm.enable_cap(Cap.ARM_VTIMER_OFFSET)
    vm.set_one_reg(0, OneReg.TIMER_CNT, 1234)
    for index in (0, 1):
        guest_values(
            host,
            vm,
            index,
            wr(SysReg.CNTV_CVAL_EL0, 5000),
            wr(SysReg.CNTV_CTL_EL0, CTL_ENABLE),
            wr(SysReg.CNTP_CVAL_EL0, (h + 77) % U64),
            wr(SysReg.CNTP_CTL_EL0, CTL_ENABLE),
        )
    return vm


@pytest.mark.parametrize(("features", "cap"), CASES)
def test_case41_reg_list_per_kernel(features: HostFeatures, cap: bool) -> None:
    vm = busy_vm(features, cap)
    expected = EXPECTED_LIST[(features.api_profile, cap)]
    for index in (0, 1):
        assert vm.reg_list(index) == expected
    assert list(timer_reg_list(features.api_profile, vtimer_offset_enabled=cap)) == expected


@pytest.mark.parametrize(("features", "cap"), CASES)
@pytest.mark.parametrize("reg_id", PTIMER_IDS, ids=["PTIMER_CTL", "PTIMER_CVAL", "PTIMER_CNT"])
def test_case41_ptimer_get_and_set(features: HostFeatures, cap: bool, reg_id: int) -> None:
    vm = busy_vm(features, cap)
    if features.has_ptimer_regs:
        value = vm.get_one_reg(1, reg_id)
        vm.set_one_reg(1, reg_id, value)
        assert vm.get_one_reg(1, reg_id) == value
        return
    before = fingerprint(vm)
    with pytest.raises(NoEntry) as get_err:
        vm.get_one_reg(1, reg_id)
    assert get_err.value.errno_name == "ENOENT"
    for value in (0, 1, 0x7, U64 - 1):
        with pytest.raises(NoEntry):
            vm.set_one_reg(1, reg_id, value)
    with pytest.raises(NoEntry):
        vm.get_regs([(0, OneReg.TIMER_CNT), (1, reg_id)])
    assert fingerprint(vm) == before


@pytest.mark.parametrize(("features", "cap"), CASES)
def test_timer_offset_column(features: HostFeatures, cap: bool) -> None:
    vm = busy_vm(features, cap)
    if features.api_profile is ApiProfile.VCPU_OFFSETS and cap:
        value = vm.get_one_reg(0, OneReg.TIMER_OFFSET)
        assert value == (vm.voffset - vm.poffset) % U64
        vm.set_one_reg(0, OneReg.TIMER_OFFSET, value)
        assert vm.get_one_reg(0, OneReg.TIMER_OFFSET) == value
        return
    before = fingerprint(vm)
    with pytest.raises(NoEntry):
        vm.get_one_reg(0, OneReg.TIMER_OFFSET)
    with pytest.raises(NoEntry):
        vm.set_one_reg(0, OneReg.TIMER_OFFSET, 5)
    assert fingerprint(vm) == before


@pytest.mark.parametrize(("features", "cap"), CASES)
@pytest.mark.parametrize("h", [10_000, U64 - 3], ids=["h-low", "h-near-wrap"])
def test_case42_every_listed_id_reads_and_writes_back(features: HostFeatures, cap: bool, h: int) -> None:
    vm = busy_vm(features, cap, h=h)
    for index in (0, 1):
        ids = vm.reg_list(index)
        read = [vm.get_one_reg(index, reg_id) for reg_id in ids]
        before = fingerprint(vm)
        for reg_id, value in zip(ids, read, strict=True):
            vm.set_one_reg(index, reg_id, value)
        assert [vm.get_one_reg(index, reg_id) for reg_id in ids] == read
        assert fingerprint(vm) == before
        # The batched form (one SetRegs of the whole list) behaves the same.
        values, _, _ = vm.get_regs([(index, r) for r in ids])
        assert values == read
        vm.set_regs([(index, r, v) for r, v in zip(ids, values, strict=True)])
        assert fingerprint(vm) == before


@pytest.mark.parametrize(("features", "cap"), CASES)
def test_case04_guest_uses_its_physical_counter_and_timer_on_every_kernel(
    features: HostFeatures, cap: bool
) -> None:
    host, vm = make_vm(features, h=0)
    if cap:
        vm.enable_cap(Cap.ARM_VTIMER_OFFSET)
    assert guest_values(host, vm, 0, wait(5000), rd(SysReg.CNTPCT_EL0)) == [5000, 5000]
    guest_values(host, vm, 0, wr(SysReg.CNTP_CVAL_EL0, 6000), wr(SysReg.CNTP_CTL_EL0, CTL_ENABLE))
    levels = {lvl.timer_id: lvl.level for lvl in vm.irq_levels(0)}
    assert levels[TimerId.PTIMER] is False
    guest_values(host, vm, 0, wait(1000))
    levels = {lvl.timer_id: lvl.level for lvl in vm.irq_levels(0)}
    assert levels[TimerId.PTIMER] is True
    assert guest_values(host, vm, 0, rd(SysReg.CNTP_CTL_EL0)) == [CTL_ENABLE | 0x4]


def test_uapi_lists_are_the_spec_rows() -> None:
    assert [int(r) for r in VTIMER_REGS] == EXPECTED_LIST[(ApiProfile.BY_VALUE, False)]
    assert [int(r) for r in (*VTIMER_REGS, *PTIMER_REGS)] == EXPECTED_LIST[
        (ApiProfile.VM_COUNTER_OFFSET, False)
    ]
