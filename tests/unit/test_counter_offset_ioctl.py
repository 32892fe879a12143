"""KVM_CHECK_EXTENSION and KVM_ARM_SET_COUNTER_OFFSET: spec §2.3, conformance cases 23-28.

Edge cases covered:
- capability 227 only on 6.4+, 206 only on the 2021 series; unknown caps are 0 (case 23)
- the ioctl sets voffset = poffset = offset, for every vCPU (case 24), also from voffset != poffset
- reserved != 0, a profile without the ioctl, values outside u64: refused, nothing changes (case 25)
- a vCPU inside KVM_RUN, or the VM resumed: EBUSY, nothing changes; works again after (case 26)
- after the ioctl, CNT / PTIMER_CNT writes succeed but are ignored, also in a batch (case 27)
- vCPUs created after the ioctl keep the offset (case 28)
- the ioctl may be repeated and overwrites the offset; offset 0 gives guest == host counter
"""

from __future__ import annotations

import pytest

from node.core.errors import BadRequest, Busy, InvalidArgument
from node.core.features import ApiProfile, HostFeatures
from node.core.uapi import KVM_ARM_SET_COUNTER_OFFSET, Cap, OneReg
from node.core.vcpu import SysReg
from tests.unit.conftest import (
    ALL_FEATURES,
    COUNTER_OFFSET_FEATURES,
    NO_COUNTER_OFFSET_FEATURES,
    advance_to,
    fingerprint,
    guest_values,
    make_host,
    make_vm,
    rd,
)

U64 = 1 << 64


def test_ioctl_and_cap_numbers() -> None:
    assert KVM_ARM_SET_COUNTER_OFFSET == 0x4010_AEB5
    assert (Cap.COUNTER_OFFSET, Cap.ARM_VTIMER_OFFSET, Cap.ONE_REG, Cap.DEVICE_CTRL) == (227, 206, 70, 89)


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_case23_check_extension(features: HostFeatures) -> None:
    host = make_host(features)
    profile = features.api_profile
    assert host.check_extension(227) == int(profile is ApiProfile.VM_COUNTER_OFFSET)
    assert host.check_extension(206) == int(profile is ApiProfile.VCPU_OFFSETS)
    assert host.check_extension(Cap.ONE_REG) == 1
    assert host.check_extension(Cap.DEVICE_CTRL) == 1
    assert host.check_extension(0) == 0
    assert host.check_extension(9999) == 0
    assert host.check_extension(-1) == 0


@pytest.mark.parametrize("features", COUNTER_OFFSET_FEATURES)
def test_case24_offset_applies_to_both_counters_on_every_vcpu(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=10_000, vcpus=2)
    vm.set_counter_offset(7000, 0)
    assert (vm.voffset, vm.poffset, vm.counter_offset_set) == (7000, 7000, True)
    for index in (0, 1):
        assert vm.get_one_reg(index, OneReg.TIMER_CNT) == 3000
        assert vm.get_one_reg(index, OneReg.PTIMER_CNT) == 3000
        assert guest_values(host, vm, index, rd(SysReg.CNTVCT_EL0), rd(SysReg.CNTPCT_EL0)) == [3000, 3000]


@pytest.mark.parametrize("features", COUNTER_OFFSET_FEATURES)
def test_ioctl_equalises_split_offsets(features: HostFeatures) -> None:
    _, vm = make_vm(features, h=10_000)
    vm.set_one_reg(0, OneReg.PTIMER_CNT, 9000)
    vm.set_one_reg(0, OneReg.TIMER_CNT, 10)
    assert (vm.voffset, vm.poffset) == (9990, 1000)
    vm.set_counter_offset(7000, 0)
    assert (vm.voffset, vm.poffset) == (7000, 7000)


@pytest.mark.parametrize("features", COUNTER_OFFSET_FEATURES)
def test_case25_reserved_field_must_be_zero(features: HostFeatures) -> None:
    _, vm = make_vm(features, h=10_000)
    before = fingerprint(vm)
    for reserved in (1, 0x8000_0000_0000_0000):
        with pytest.raises(InvalidArgument) as exc_info:
            vm.set_counter_offset(7000, reserved)
        assert exc_info.value.errno_name == "EINVAL"
    assert fingerprint(vm) == before
    assert vm.counter_offset_set is False
    # Not sticky: a by-value write still works afterwards.
    vm.set_one_reg(0, OneReg.TIMER_CNT, 5)
    assert vm.voffset == 9995


@pytest.mark.parametrize("features", NO_COUNTER_OFFSET_FEATURES)
def test_ioctl_missing_before_6_4_is_einval(features: HostFeatures) -> None:
    _, vm = make_vm(features, h=10_000)
    before = fingerprint(vm)
    with pytest.raises(InvalidArgument):
        vm.set_counter_offset(7000, 0)
    assert fingerprint(vm) == before


@pytest.mark.parametrize(("offset", "reserved"), [(U64, 0), (-1, 0), (0, U64), (0, -1)])
def test_ioctl_fields_outside_u64_are_bad_requests(offset: int, reserved: int) -> None:
    _, vm = make_vm(h=10_000)
    before = fingerprint(vm)
    with pytest.raises(BadRequest):
        vm.set_counter_offset(offset, reserved)
    assert fingerprint(vm) == before


@pytest.mark.parametrize("features", COUNTER_OFFSET_FEATURES)
def test_case26_busy_while_a_vcpu_is_in_kvm_run(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=10_000, vcpus=2)
    vcpu1 = vm.enter_run(1)
    before = fingerprint(vm)
    with pytest.raises(Busy) as exc_info:
        vm.set_counter_offset(7000, 0)
    assert exc_info.value.errno_name == "EBUSY"
    assert fingerprint(vm) == before
    assert vm.counter_offset_set is False
    vm.exit_run(vcpu1)
    vm.set_counter_offset(7000, 0)
    assert vm.get_one_reg(1, OneReg.TIMER_CNT) == 3000
    assert host.counter.read() == 10_000


@pytest.mark.parametrize("features", COUNTER_OFFSET_FEATURES)
def test_case26_busy_while_the_vm_is_resumed(features: HostFeatures) -> None:
    _, vm = make_vm(features, h=10_000, vcpus=2)
    vm.resume()
    before = fingerprint(vm)
    with pytest.raises(Busy):
        vm.set_counter_offset(7000, 0)
    assert fingerprint(vm) == before
    vm.pause()
    vm.set_counter_offset(7000, 0)
    assert vm.get_one_reg(0, OneReg.PTIMER_CNT) == 3000


@pytest.mark.parametrize("features", COUNTER_OFFSET_FEATURES)
def test_case27_counter_writes_are_ignored_after_the_ioctl(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=10_000, vcpus=2)
    vm.set_counter_offset(7000, 0)
    vm.set_one_reg(0, OneReg.TIMER_CNT, 0)
    vm.set_one_reg(0, OneReg.PTIMER_CNT, 0)
    vm.set_regs([(1, OneReg.TIMER_CNT, 123), (1, OneReg.PTIMER_CNT, 456), (1, OneReg.TIMER_CVAL, 42)])
    assert (vm.voffset, vm.poffset) == (7000, 7000)
    for index in (0, 1):
        assert vm.get_one_reg(index, OneReg.TIMER_CNT) == 3000
        assert vm.get_one_reg(index, OneReg.PTIMER_CNT) == 3000
    # Timer registers are still written normally.
    assert vm.get_one_reg(1, OneReg.TIMER_CVAL) == 42
    assert host.counter.read() == 10_000


@pytest.mark.parametrize("features", COUNTER_OFFSET_FEATURES)
def test_case28_vcpu_created_after_the_ioctl_keeps_the_offset(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=10_000, vcpus=2)
    vm.set_counter_offset(7000, 0)
    advance_to(host, 12_000)
    vm.create_vcpu(2)
    assert (vm.voffset, vm.poffset) == (7000, 7000)
    assert vm.get_one_reg(2, OneReg.TIMER_CNT) == 5000
    assert vm.get_one_reg(0, OneReg.TIMER_CNT) == 5000
    assert vm.get_one_reg(2, OneReg.PTIMER_CNT) == 5000


@pytest.mark.parametrize("features", COUNTER_OFFSET_FEATURES)
def test_ioctl_before_any_vcpu_and_repeated(features: HostFeatures) -> None:
    host = make_host(features, h=10_000)
    vm = host.create_vm("vm0")
    vm.set_counter_offset(7000, 0)
    vm.create_vcpu(0)
    assert vm.get_one_reg(0, OneReg.TIMER_CNT) == 3000
    vm.set_counter_offset(2000, 0)
    assert vm.get_one_reg(0, OneReg.TIMER_CNT) == 8000
    vm.set_counter_offset(0, 0)
    assert vm.get_one_reg(0, OneReg.TIMER_CNT) == 10_000
    assert vm.get_one_reg(0, OneReg.PTIMER_CNT) == 10_000
    assert vm.counter_offset_set is True
    vm.set_counter_offset(U64 - 1, 0)
    assert vm.get_one_reg(0, OneReg.TIMER_CNT) == 10_001
