"""Hypothesis invariants of snapshot / restore.

- snapshot -> Host.restore_vm on a fresh host with the same features -> snapshot is
  identical (the clock has not moved), for random vCPU sets, timer registers, offsets set
  through every control the profile has, PPIs, caps, NV and irqchip choices
- restoring under another name changes only vm_id; every guest-visible register and line matches
- guest CNTVCT and CNTPCT are continuous across a migration that applies the §4.2
  offset formula on a destination with another host counter and any host mode
"""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from node.core.clock import NS_PER_S, ManualClock
from node.core.features import ALL_FEATURE_COMBINATIONS, ApiProfile, HostFeatures
from node.core.host import Host
from node.core.state import VmState
from node.core.uapi import KVM_ARM_VCPU_TIMER_CTRL, KVM_ARM_VCPU_TIMER_PHYS_OFFSET, Cap, OneReg, TimerAttr
from node.core.vm import Vm
from tests.unit.conftest import get_reg, set_reg

U64 = 1 << 64
u64s = st.integers(min_value=0, max_value=U64 - 1)
TIMER_REGS = (OneReg.TIMER_CTL, OneReg.TIMER_CVAL, OneReg.PTIMER_CTL, OneReg.PTIMER_CVAL)


def build_vm(data: st.DataObject, host: Host) -> Vm:
    """A VM driven into a random state through the public controls of its host's profile."""
    features = host.features
    vm = host.create_vm("vm-a", userspace_irqchip=data.draw(st.booleans(), label="userspace_irqchip"))
    indices = data.draw(st.lists(st.integers(0, 511), min_size=1, max_size=4, unique=True), label="vcpus")
    for index in indices:
        vm.create_vcpu(index)
        host.step_clock(data.draw(st.integers(0, 10_000), label="step"))
    for index in indices:
        for reg in TIMER_REGS:
            set_reg(vm, index, reg, data.draw(u64s, label=reg.name))
    if not vm.userspace_irqchip:
        attrs = [TimerAttr.IRQ_VTIMER, TimerAttr.IRQ_PTIMER]
        if features.nv and not features.has_vcpu_offsets:
            attrs.append(TimerAttr.IRQ_HVTIMER)
        if features.nv:
            attrs.append(TimerAttr.IRQ_HPTIMER)
        for attr in data.draw(st.lists(st.sampled_from(attrs), max_size=3), label="ppi attrs"):
            vm.set_attr(indices[0], KVM_ARM_VCPU_TIMER_CTRL, attr, data.draw(st.integers(16, 31)))
    controls = ["timer_cnt"]
    if features.has_counter_offset_cap:
        controls += ["ptimer_cnt", "counter_offset"]
    if features.has_vcpu_offsets:
        controls += ["phys_offset", "timer_offset"]
        if data.draw(st.booleans(), label="enable cap 206"):
            vm.enable_cap(Cap.ARM_VTIMER_OFFSET)
    for control in data.draw(st.lists(st.sampled_from(controls), max_size=5), label="controls"):
        value = data.draw(u64s, label=control)
        index = data.draw(st.sampled_from(indices))
        if control == "timer_cnt":
            vm.set_one_reg(index, OneReg.TIMER_CNT, value)
        elif control == "ptimer_cnt":
            vm.set_one_reg(index, OneReg.PTIMER_CNT, value)
        elif control == "counter_offset":
            vm.set_counter_offset(value, 0)
        elif control == "phys_offset":
            vm.set_attr(index, KVM_ARM_VCPU_TIMER_CTRL, KVM_ARM_VCPU_TIMER_PHYS_OFFSET, value)
        elif vm.vtimer_offset_enabled:
            vm.set_one_reg(index, OneReg.TIMER_OFFSET, value)
    return vm


def guest_visible(vm: Vm) -> list[object]:
    out: list[object] = []
    for index in sorted(vm.vcpus):
        regs = vm.reg_list(index)
        out.append((index, regs, vm.get_regs([(index, r) for r in regs])[0], vm.irq_levels(index)))
    return out


@settings(max_examples=150)
@given(
    data=st.data(),
    features=st.sampled_from(ALL_FEATURE_COMBINATIONS),
    nv=st.booleans(),
    base=u64s,
)
def test_snapshot_restore_round_trips_exactly(
    data: st.DataObject, features: HostFeatures, nv: bool, base: int
) -> None:
    features = dataclasses.replace(features, nv=nv)
    clock = ManualClock()
    src = Host("src", features, clock, counter_base=base)
    vm = build_vm(data, src)
    state = vm.snapshot()
    dst = Host("dst", features, clock, counter_base=src.counter.read())
    restored = dst.restore_vm(state)
    assert restored.snapshot() == state
    assert restored.traps == vm.traps
    assert guest_visible(restored) == guest_visible(vm)
    for index in vm.vcpus:
        regs = vm.reg_list(index)
        # The batched read agrees with one-by-one reads (the clock has not moved).
        assert vm.get_regs([(index, r) for r in regs])[0] == [vm.get_one_reg(index, r) for r in regs]
    renamed = dst.restore_vm(state, "vm-b")
    assert renamed.snapshot() == dataclasses.replace(state, vm_id="vm-b")
    # The destination's copy is independent of the source.
    vm.set_one_reg(state.vcpus[0].index, OneReg.TIMER_CVAL, 12345)
    assert restored.snapshot() == state


def migration_offsets(state: VmState, h_d: int, realtime_d_ns: int) -> tuple[int, int]:
    """§4.2 destination (voffset, poffset)."""
    elapsed = max(0, (realtime_d_ns - state.realtime_ns) * state.cntfrq_hz // NS_PER_S)
    g_v = state.host_counter - state.voffset + elapsed
    g_p = state.host_counter - state.poffset + elapsed
    return (h_d - g_v) % U64, (h_d - g_p) % U64


@settings(max_examples=150)
@given(
    data=st.data(),
    src_features=st.sampled_from(ALL_FEATURE_COMBINATIONS),
    dst_features=st.sampled_from(
        [f for f in ALL_FEATURE_COMBINATIONS if f.api_profile is ApiProfile.VM_COUNTER_OFFSET]
    ),
    src_base=u64s,
    dst_base=u64s,
    transit_ns=st.integers(0, 10 * NS_PER_S),
)
def test_guest_counters_continuous_across_migration(
    data: st.DataObject,
    src_features: HostFeatures,
    dst_features: HostFeatures,
    src_base: int,
    dst_base: int,
    transit_ns: int,
) -> None:
    clock = ManualClock()
    src = Host("src", src_features, clock, counter_base=src_base)
    dst = Host("dst", dst_features, clock, counter_base=dst_base)
    vm = build_vm(data, src)
    index = min(vm.vcpus)
    cntvct_s, cntpct_s = get_reg(vm, index, OneReg.TIMER_CNT), get_reg(vm, index, OneReg.PTIMER_CNT)
    state = vm.snapshot()
    clock.advance_ns(transit_ns)
    h_d, realtime_d = dst.get_clock()
    restored = dst.restore_vm(state)
    voffset_d, poffset_d = migration_offsets(state, h_d, realtime_d)
    if voffset_d == poffset_d:
        restored.set_counter_offset(voffset_d, 0)
    else:
        restored.set_regs(
            [
                (index, OneReg.TIMER_CNT, (h_d - voffset_d) % U64),
                (index, OneReg.PTIMER_CNT, (h_d - poffset_d) % U64),
            ]
        )
    elapsed = transit_ns * state.cntfrq_hz // NS_PER_S
    values = restored.get_regs([(index, OneReg.TIMER_CNT), (index, OneReg.PTIMER_CNT)])[0]
    assert values == [(cntvct_s + elapsed) % U64, (cntpct_s + elapsed) % U64]
    assert restored.traps.trap_cntpct is (poffset_d != 0 and not dst_features.has_cntpoff)
