"""Timer PPI device attributes (group KVM_ARM_VCPU_TIMER_CTRL): spec §2.2, conformance cases 16-22.

Edge cases covered:
- defaults 27/30 (and 28/26 for the EL2 timers on NV hosts); has_attr succeeds (case 16)
- a PPI set on one vCPU is seen on every vCPU existing then (case 17); a vCPU created later
  keeps the defaults before 6.4 and the first run is EINVAL (vCPUs disagree); 6.4+ gives it
  the VM-wide value
- INTIDs outside 16..31 are EINVAL, boundaries 16 and 31 accepted (case 18)
- PPIs freeze after the first KVM_RUN: VM-wide on 6.4+, per vCPU before (5.15 and the series) (§2.2, case 19)
- userspace irqchip: every set is EINVAL, checked before the value (case 20)
- unknown attribute / group / series-only attr 2 on other hosts are ENXIO (case 21);
  set_attr checks the PPI range before the attribute (kernel order)
- duplicate PPIs are accepted by set_attr but the first KVM_RUN / resume is EINVAL (case 22)
- no new vCPU once a vGIC VM has run (EBUSY); userspace irqchip VMs may add vCPUs
- every refused call leaves the VM unchanged
"""

from __future__ import annotations

import pytest

from node.core.errors import BadRequest, Busy, InvalidArgument, NoSuchAttr, VcpuNotFound
from node.core.features import ApiProfile, EcvLevel, HostFeatures
from node.core.timer import TimerId
from node.core.uapi import KVM_ARM_VCPU_TIMER_CTRL, KVM_ARM_VCPU_TIMER_PHYS_OFFSET, TimerAttr
from tests.unit.conftest import (
    ALL_FEATURES,
    COUNTER_OFFSET_FEATURES,
    PRE_6_4_FEATURES,
    fingerprint,
    make_host,
    make_vm,
)

G = KVM_ARM_VCPU_TIMER_CTRL
VT, PT = TimerAttr.IRQ_VTIMER, TimerAttr.IRQ_PTIMER
NOT_SERIES = [
    pytest.param(HostFeatures(api_profile=p), id=p.name.lower())
    for p in (ApiProfile.BY_VALUE, ApiProfile.VM_COUNTER_OFFSET)
]
SIX_4 = [pytest.param(HostFeatures(api_profile=ApiProfile.VM_COUNTER_OFFSET), id="vm_counter_offset")]
PRE_6_4 = [
    pytest.param(HostFeatures(api_profile=p), id=p.name.lower())
    for p in (ApiProfile.BY_VALUE, ApiProfile.VCPU_OFFSETS)
]


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_case16_default_ppis(features: HostFeatures) -> None:
    _, vm = make_vm(features)
    assert vm.get_attr(0, G, VT) == 27
    assert vm.get_attr(0, G, PT) == 30
    vm.has_attr(0, G, VT)
    vm.has_attr(0, G, PT)
    with pytest.raises(NoSuchAttr):
        vm.has_attr(0, G, TimerAttr.IRQ_HPTIMER)


@pytest.mark.parametrize("profile", [ApiProfile.BY_VALUE, ApiProfile.VM_COUNTER_OFFSET])
def test_case16_nv_host_has_el2_timer_ppis(profile: ApiProfile) -> None:
    _, vm = make_vm(HostFeatures(nv=True, api_profile=profile))
    assert vm.get_attr(0, G, TimerAttr.IRQ_HVTIMER) == 28
    assert vm.get_attr(0, G, TimerAttr.IRQ_HPTIMER) == 26
    vm.has_attr(0, G, TimerAttr.IRQ_HVTIMER)
    vm.has_attr(0, G, TimerAttr.IRQ_HPTIMER)
    vm.set_attr(0, G, TimerAttr.IRQ_HPTIMER, 25)
    assert vm.vcpu(0).ppis == [27, 30, 28, 25]


def test_series_attr_2_is_the_physical_offset_even_with_nv() -> None:
    # The 2021 series' PHYS_OFFSET collides with upstream IRQ_HVTIMER; the series wins.
    _, vm = make_vm(HostFeatures(nv=True, api_profile=ApiProfile.VCPU_OFFSETS), h=1000)
    assert vm.get_attr(0, G, KVM_ARM_VCPU_TIMER_PHYS_OFFSET) == 0
    vm.set_attr(0, G, KVM_ARM_VCPU_TIMER_PHYS_OFFSET, 20)
    assert (vm.voffset, vm.poffset) == (1020, 20)
    assert vm.get_attr(0, G, KVM_ARM_VCPU_TIMER_PHYS_OFFSET) == 20
    assert vm.vcpu(0).ppis[TimerId.HVTIMER] == 28
    assert vm.get_attr(0, G, TimerAttr.IRQ_HPTIMER) == 26


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_case17_ppi_is_vm_wide(features: HostFeatures) -> None:
    _, vm = make_vm(features, vcpus=2)
    vm.set_attr(0, G, VT, 20)
    assert vm.get_attr(1, G, VT) == 20
    assert vm.get_attr(1, G, PT) == 30


@pytest.mark.parametrize("features", PRE_6_4_FEATURES)
def test_pre_6_4_irq_attr_reaches_only_the_vcpus_existing_then(features: HostFeatures) -> None:
    host, vm = make_vm(features, vcpus=1)
    vm.set_attr(0, G, VT, 20)
    vm.set_attr(0, G, PT, 21)
    vm.create_vcpu(1)
    # set_timer_irqs() wrote vCPU 0 only; vCPU 1 starts with the defaults.
    assert (vm.get_attr(0, G, VT), vm.get_attr(0, G, PT)) == (20, 21)
    assert (vm.get_attr(1, G, VT), vm.get_attr(1, G, PT)) == (27, 30)
    before = fingerprint(vm)
    # timer_irqs_are_valid(): the vCPUs disagree, so the first KVM_RUN fails, on any vCPU.
    for index in (0, 1):
        with pytest.raises(InvalidArgument) as exc_info:
            host.run_vcpu(vm.vm_id, index, [])
        assert exc_info.value.errno_name == "EINVAL"
    with pytest.raises(InvalidArgument):
        vm.resume()
    assert fingerprint(vm) == before
    assert vm.ppis_frozen is False
    # Writing again now reaches both vCPUs; then the run succeeds with the new PPIs.
    vm.set_attr(1, G, VT, 20)
    vm.set_attr(1, G, PT, 21)
    host.run_vcpu(vm.vm_id, 1, [])
    assert [lvl.intid for lvl in vm.irq_levels(1)] == [20, 21]


@pytest.mark.parametrize("features", COUNTER_OFFSET_FEATURES)
def test_6_4_irq_attr_is_vm_wide_also_for_later_vcpus(features: HostFeatures) -> None:
    host, vm = make_vm(features, vcpus=1)
    vm.set_attr(0, G, VT, 20)
    vm.create_vcpu(1)
    assert vm.get_attr(1, G, VT) == 20
    host.run_vcpu(vm.vm_id, 1, [])
    assert [lvl.intid for lvl in vm.irq_levels(0)] == [20, 30]


@pytest.mark.parametrize("features", ALL_FEATURES)
@pytest.mark.parametrize("value", [35, 15, 0, 32, 1020, 1 << 40])
def test_case18_non_ppi_is_einval(features: HostFeatures, value: int) -> None:
    _, vm = make_vm(features)
    before = fingerprint(vm)
    with pytest.raises(InvalidArgument) as exc_info:
        vm.set_attr(0, G, VT, value)
    assert exc_info.value.errno_name == "EINVAL"
    assert vm.get_attr(0, G, VT) == 27
    assert fingerprint(vm) == before


@pytest.mark.parametrize("value", [16, 31])
def test_case18_ppi_range_boundaries_are_accepted(value: int) -> None:
    _, vm = make_vm()
    vm.set_attr(0, G, PT, value)
    assert vm.get_attr(0, G, PT) == value


@pytest.mark.parametrize("features", SIX_4)
def test_case19_ppis_freeze_vm_wide_after_first_run(features: HostFeatures) -> None:
    host, vm = make_vm(features, vcpus=2)
    host.run_vcpu(vm.vm_id, 0, [])
    assert vm.ppis_frozen is True
    for index in (0, 1):
        before = fingerprint(vm)
        with pytest.raises(Busy) as exc_info:
            vm.set_attr(index, G, VT, 20)
        assert exc_info.value.errno_name == "EBUSY"
        assert fingerprint(vm) == before
    assert vm.get_attr(1, G, VT) == 27


@pytest.mark.parametrize("features", PRE_6_4)
def test_case19_pre_6_4_kernel_freezes_only_the_vcpu_that_ran(features: HostFeatures) -> None:
    host, vm = make_vm(features, vcpus=2)
    host.run_vcpu(vm.vm_id, 0, [])
    with pytest.raises(Busy):
        vm.set_attr(0, G, VT, 20)
    assert vm.get_attr(0, G, VT) == 27
    # Older kernels only checked "this vCPU's timer enabled".
    vm.set_attr(1, G, VT, 20)
    assert vm.get_attr(0, G, VT) == 20


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_case19_resume_freezes_ppis_for_every_vcpu(features: HostFeatures) -> None:
    _, vm = make_vm(features, vcpus=2)
    vm.resume()
    vm.pause()
    for index in (0, 1):
        with pytest.raises(Busy):
            vm.set_attr(index, G, PT, 20)
    assert vm.get_attr(0, G, PT) == 30


@pytest.mark.parametrize("features", ALL_FEATURES)
@pytest.mark.parametrize("value", [27, 99])
def test_case20_userspace_irqchip_refuses_ppis(features: HostFeatures, value: int) -> None:
    _, vm = make_vm(features, userspace_irqchip=True)
    before = fingerprint(vm)
    with pytest.raises(InvalidArgument):
        vm.set_attr(0, G, VT, value)
    assert fingerprint(vm) == before
    assert vm.get_attr(0, G, VT) == 27


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_case21_unknown_attribute_is_enxio(features: HostFeatures) -> None:
    _, vm = make_vm(features)
    before = fingerprint(vm)
    with pytest.raises(NoSuchAttr) as exc_info:
        vm.has_attr(0, G, 7)
    assert exc_info.value.errno_name == "ENXIO"
    with pytest.raises(NoSuchAttr):
        vm.get_attr(0, G, 7)
    with pytest.raises(NoSuchAttr):
        vm.set_attr(0, G, 7, 27)
    assert fingerprint(vm) == before


@pytest.mark.parametrize("features", ALL_FEATURES)
@pytest.mark.parametrize("group", [0, 2, 0xFFFF])
def test_unknown_group_is_enxio(features: HostFeatures, group: int) -> None:
    _, vm = make_vm(features)
    before = fingerprint(vm)
    with pytest.raises(NoSuchAttr):
        vm.has_attr(0, group, VT)
    with pytest.raises(NoSuchAttr):
        vm.get_attr(0, group, VT)
    with pytest.raises(NoSuchAttr):
        vm.set_attr(0, group, VT, 27)
    with pytest.raises(NoSuchAttr):
        vm.set_attr(0, group, KVM_ARM_VCPU_TIMER_PHYS_OFFSET, 0x100)
    assert fingerprint(vm) == before


@pytest.mark.parametrize("features", NOT_SERIES)
def test_case21_phys_offset_attr_not_offered(features: HostFeatures) -> None:
    _, vm = make_vm(features, h=1000)
    before = fingerprint(vm)
    with pytest.raises(NoSuchAttr):
        vm.has_attr(0, G, KVM_ARM_VCPU_TIMER_PHYS_OFFSET)
    with pytest.raises(NoSuchAttr):
        vm.get_attr(0, G, KVM_ARM_VCPU_TIMER_PHYS_OFFSET)
    # The kernel checks the value (not a PPI) before it looks the attribute up.
    with pytest.raises(InvalidArgument):
        vm.set_attr(0, G, KVM_ARM_VCPU_TIMER_PHYS_OFFSET, 0x100)
    with pytest.raises(NoSuchAttr):
        vm.set_attr(0, G, KVM_ARM_VCPU_TIMER_PHYS_OFFSET, 20)
    assert fingerprint(vm) == before


@pytest.mark.parametrize("ecv", list(EcvLevel))
def test_series_phys_offset_attr_offered_on_every_ecv_level(ecv: EcvLevel) -> None:
    # v7 5/7 needed ECV >= 2; v7 7/7 and v8 emulate it everywhere: has_attr succeeds.
    _, vm = make_vm(HostFeatures(ecv=ecv, api_profile=ApiProfile.VCPU_OFFSETS), h=1000, vcpus=2)
    vm.has_attr(0, G, KVM_ARM_VCPU_TIMER_PHYS_OFFSET)
    vm.set_attr(1, G, KVM_ARM_VCPU_TIMER_PHYS_OFFSET, 0x100)
    assert vm.get_attr(0, G, KVM_ARM_VCPU_TIMER_PHYS_OFFSET) == 0x100
    assert (vm.voffset, vm.poffset) == (1000 + 0x100, 0x100)


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_case22_duplicate_ppis_fail_the_first_run(features: HostFeatures) -> None:
    host, vm = make_vm(features, vcpus=2)
    vm.set_attr(0, G, VT, 27)
    vm.set_attr(0, G, PT, 27)
    before = fingerprint(vm)
    with pytest.raises(InvalidArgument):
        host.run_vcpu(vm.vm_id, 0, [])
    with pytest.raises(InvalidArgument):
        vm.enter_run(1)
    with pytest.raises(InvalidArgument):
        vm.resume()
    assert fingerprint(vm) == before
    assert vm.ppis_frozen is False
    # Fixing the clash makes the run succeed and freezes the PPIs.
    vm.set_attr(0, G, PT, 30)
    host.run_vcpu(vm.vm_id, 0, [])
    assert (vm.ppis_frozen, vm.vcpu(0).has_run, vm.vcpu(1).has_run) == (True, True, False)


def test_case22_nv_el2_ppis_must_also_be_distinct() -> None:
    host, vm = make_vm(HostFeatures(nv=True))
    vm.set_attr(0, G, TimerAttr.IRQ_HVTIMER, 27)
    with pytest.raises(InvalidArgument):
        host.run_vcpu(vm.vm_id, 0, [])
    vm.set_attr(0, G, TimerAttr.IRQ_HVTIMER, 29)
    host.run_vcpu(vm.vm_id, 0, [])
    assert vm.vcpu(0).ppis == [27, 30, 29, 26]


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_no_new_vcpu_after_a_vgic_vm_has_run(features: HostFeatures) -> None:
    host, vm = make_vm(features)
    host.run_vcpu(vm.vm_id, 0, [])
    before = fingerprint(vm)
    with pytest.raises(Busy):
        vm.create_vcpu(1)
    assert fingerprint(vm) == before


def test_userspace_irqchip_vm_may_add_vcpus_after_running() -> None:
    host, vm = make_vm(userspace_irqchip=True, h=10)
    host.run_vcpu(vm.vm_id, 0, [])
    host.step_clock(5)
    vm.create_vcpu(1)
    assert sorted(vm.vcpus) == [0, 1]
    assert vm.voffset == 15


def test_attr_bad_inputs() -> None:
    host = make_host()
    vm = host.create_vm("vm0")
    vm.create_vcpu(0)
    before = fingerprint(vm)
    with pytest.raises(VcpuNotFound):
        vm.get_attr(1, G, VT)
    with pytest.raises(VcpuNotFound):
        vm.has_attr(1, G, VT)
    with pytest.raises(VcpuNotFound):
        vm.set_attr(1, G, VT, 20)
    with pytest.raises(BadRequest):
        vm.set_attr(0, G, VT, 1 << 64)
    with pytest.raises(BadRequest):
        vm.set_attr(0, G, VT, -1)
    assert fingerprint(vm) == before
