"""Snapshot / restore of a VM's timer state (VmState, the migration payload).

Edge cases covered:
- the snapshot captures offsets, flags, PPIs, stored CTL (never ISTATUS), CVAL, vCPUs
  ordered by index, and the (H, realtime) anchor sampled together
- restore on a fresh host with the same features round-trips exactly in every host mode;
  restoring under another name changes only vm_id
- restore keeps the offsets (no time adjustment): guest counters read H_d - offset
- a restored VM starts paused and un-run (PPIs not frozen), trap counts 0, traps recomputed
  from poffset for the destination's mode
- trap counts and run history are host statistics, not snapshot content
- CNTFRQ mismatch is EINVAL and adds nothing; a taken id is EEXIST
- flags of an API the destination lacks are dropped (series CNTVOFF cap, 6.4+ counter-offset flag)
- migrate while pending: after the §4.2 offset-based restore a pending timer fires at the
  same guest count, the destination traps per its own mode
- §4.2 worked example (cases 36/37 ingredients at core level): offset 85,937,500,000,
  re-applying later gives the same offset, a late by-value write lags 12,500,000 ticks
"""

from __future__ import annotations

import dataclasses

import pytest

from node.core.clock import NS_PER_S, ManualClock
from node.core.errors import AlreadyExists, InvalidArgument
from node.core.features import ApiProfile, EcvLevel, HostFeatures
from node.core.host import Host
from node.core.state import TimerState, VcpuState, VmState
from node.core.timer import TimerId
from node.core.traps import compute_traps
from node.core.uapi import KVM_ARM_VCPU_TIMER_CTRL, Cap, OneReg, TimerAttr
from node.core.vcpu import AccessResult, SysReg
from node.core.vm import Vm
from tests.unit.conftest import (
    ALL_FEATURES,
    POFFSET_FEATURES,
    fingerprint,
    get_reg,
    guest,
    line,
    make_host,
    make_vm,
    rd,
    set_poffset,
    set_reg,
)

U64 = 1 << 64
REALTIME_BASE_NS = 1_700_000_000 * NS_PER_S
V, P, HV, HP = TimerId.VTIMER, TimerId.PTIMER, TimerId.HVTIMER, TimerId.HPTIMER


def timers(*pairs: tuple[int, int]) -> tuple[TimerState, ...]:
    return tuple(TimerState(t, ctl, cval) for t, (ctl, cval) in zip(TimerId, pairs, strict=True))


def offset_for(state: VmState, h_d: int, realtime_d_ns: int) -> int:
    """§4.2: the destination offset that makes the guest counter continue with real time."""
    elapsed_ticks = max(0, (realtime_d_ns - state.realtime_ns) * state.cntfrq_hz // NS_PER_S)
    guest_now = state.host_counter - state.voffset + elapsed_ticks
    return (h_d - guest_now) % U64


def populated_vm(features: HostFeatures) -> tuple[Host, Vm]:
    """A VM with two vCPUs (created out of order), programmed timers and non-default state."""
    host = make_host(features, h=1000)
    vm = host.create_vm("vm-a")
    vm.create_vcpu(3)
    host.step_clock(10)
    vm.create_vcpu(1)
    vm.set_attr(1, KVM_ARM_VCPU_TIMER_CTRL, TimerAttr.IRQ_VTIMER, 20)
    if features.supports_physical_offset:
        set_poffset(vm, 0x100, index=1)
    set_reg(vm, 3, OneReg.TIMER_CNT, 500)
    vm.set_regs([(3, OneReg.TIMER_CTL, 0x7), (3, OneReg.TIMER_CVAL, 400)])
    set_reg(vm, 1, OneReg.PTIMER_CTL, 0x3)
    set_reg(vm, 1, OneReg.PTIMER_CVAL, U64 - 1)
    if features.has_vcpu_offsets:
        vm.enable_cap(Cap.ARM_VTIMER_OFFSET)
    host.step_clock(7)
    return host, vm


def test_snapshot_contents() -> None:
    clock = ManualClock(start_ns=0)
    host = Host("src", HostFeatures(), clock, counter_base=1000)
    vm = host.create_vm("vm-a")
    vm.create_vcpu(3)
    host.step_clock(10)
    vm.create_vcpu(1)
    vm.set_attr(1, KVM_ARM_VCPU_TIMER_CTRL, TimerAttr.IRQ_VTIMER, 20)
    set_reg(vm, 1, OneReg.PTIMER_CNT, 1010 - 0x100)
    set_reg(vm, 3, OneReg.TIMER_CNT, 500)
    set_reg(vm, 3, OneReg.TIMER_CTL, 0x7)
    set_reg(vm, 3, OneReg.TIMER_CVAL, 400)
    set_reg(vm, 1, OneReg.PTIMER_CTL, 0x3)
    set_reg(vm, 1, OneReg.PTIMER_CVAL, U64 - 1)
    host.step_clock(7)
    assert vm.snapshot() == VmState(
        vm_id="vm-a",
        cntfrq_hz=25_000_000,
        userspace_irqchip=False,
        voffset=510,
        poffset=0x100,
        counter_offset_set=False,
        vtimer_offset_enabled=False,
        ppis=(20, 30, 28, 26),
        vcpus=(
            VcpuState(1, timers((0, 0), (0x3, U64 - 1), (0, 0), (0, 0))),
            VcpuState(3, timers((0x3, 400), (0, 0), (0, 0), (0, 0))),
        ),
        host_counter=1017,
        realtime_ns=REALTIME_BASE_NS + 17 * 40,  # 40 ns per tick at 25 MHz
    )


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_round_trip_on_a_fresh_host(features: HostFeatures) -> None:
    src, vm = populated_vm(features)
    state = vm.snapshot()
    # Same clock, booted so that its counter reads what the source's does: nothing moved.
    dst = Host("dst", features, src.counter.clock, counter_base=src.counter.read())
    restored = dst.restore_vm(state)
    assert restored.vm_id == "vm-a"
    assert restored.snapshot() == state
    assert restored.traps == vm.traps
    for index in (1, 3):
        regs = vm.reg_list(index)
        assert restored.reg_list(index) == regs
        assert restored.get_regs([(index, r) for r in regs])[0] == vm.get_regs([(index, r) for r in regs])[0]
        assert restored.irq_levels(index) == vm.irq_levels(index)
    renamed = dst.restore_vm(state, "vm-b")
    assert renamed.snapshot() == dataclasses.replace(state, vm_id="vm-b")
    assert sorted(dst.vms) == ["vm-a", "vm-b"]


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_restore_keeps_offsets_without_time_adjustment(features: HostFeatures) -> None:
    _, vm = populated_vm(features)
    state = vm.snapshot()
    dst = make_host(features, h=90_000)
    restored = dst.restore_vm(state)
    assert (restored.voffset, restored.poffset) == (state.voffset, state.poffset)
    assert get_reg(restored, 3, OneReg.TIMER_CNT) == 90_000 - state.voffset
    assert get_reg(restored, 3, OneReg.PTIMER_CNT) == 90_000 - state.poffset


@pytest.mark.parametrize("features", POFFSET_FEATURES)
def test_restored_vm_starts_paused_unrun_with_its_own_traps(features: HostFeatures) -> None:
    src, vm = populated_vm(features)
    guest(src, vm, 1, rd(SysReg.CNTP_CTL_EL0), rd(SysReg.CNTPCT_EL0))
    vm.resume()
    state = vm.snapshot()
    for dst_features in (
        HostFeatures(ecv=EcvLevel.NI, vhe=False, api_profile=features.api_profile),
        HostFeatures(ecv=EcvLevel.CNTPOFF, vhe=True, api_profile=features.api_profile),
    ):
        dst = make_host(dst_features, h=5000)
        restored = dst.restore_vm(state)
        assert (restored.running, restored.ppis_frozen) == (False, False)
        history = [(v.has_run, v.in_run, v.trap_count) for v in restored.vcpus.values()]
        assert history == [(False, False, 0)] * 2
        assert restored.traps == compute_traps(dst_features, 0x100)
        results = guest(dst, restored, 1, rd(SysReg.CNTPCT_EL0))
        assert results[0] == AccessResult(5000 - 0x100, trapped=not dst_features.vhe)


def test_trap_counts_are_not_in_the_snapshot() -> None:
    host, vm = make_vm(HostFeatures(vhe=False), h=1000)
    host.run_vcpu(vm.vm_id, 0, [])
    before = vm.snapshot()
    guest(host, vm, 0, rd(SysReg.CNTP_CTL_EL0), rd(SysReg.CNTP_CVAL_EL0))
    assert vm.vcpu(0).trap_count == 2
    assert vm.snapshot() == before


def test_cntfrq_mismatch_is_refused() -> None:
    _, vm = make_vm(HostFeatures(cntfrq_hz=25_000_000), h=1000)
    state = vm.snapshot()
    dst = make_host(HostFeatures(cntfrq_hz=1_000_000_000))
    with pytest.raises(InvalidArgument):
        dst.restore_vm(state)
    assert dst.vms == {}


def test_restore_onto_a_taken_id_is_eexist() -> None:
    _, vm = make_vm(h=1000, vm_id="a")
    state = vm.snapshot()
    dst = make_host()
    existing = dst.create_vm("a")
    with pytest.raises(AlreadyExists):
        dst.restore_vm(state)
    assert dst.vm("a") is existing
    assert existing.vcpus == {}
    assert dst.restore_vm(state, "b").vm_id == "b"


def test_userspace_irqchip_survives_restore() -> None:
    _, vm = make_vm(h=1000, userspace_irqchip=True)
    restored = make_host().restore_vm(vm.snapshot())
    assert restored.userspace_irqchip is True
    with pytest.raises(InvalidArgument):
        restored.set_attr(0, KVM_ARM_VCPU_TIMER_CTRL, TimerAttr.IRQ_VTIMER, 20)


def test_series_cntvoff_cap_is_dropped_on_an_upstream_host() -> None:
    _, vm = make_vm(HostFeatures(api_profile=ApiProfile.VCPU_OFFSETS), h=1000)
    vm.enable_cap(Cap.ARM_VTIMER_OFFSET)
    state = vm.snapshot()
    series = make_host(HostFeatures(api_profile=ApiProfile.VCPU_OFFSETS)).restore_vm(state)
    assert series.vtimer_offset_enabled is True
    assert OneReg.TIMER_OFFSET in series.reg_list(0)
    restored = make_host(HostFeatures(api_profile=ApiProfile.VM_COUNTER_OFFSET)).restore_vm(state)
    assert restored.vtimer_offset_enabled is False
    assert OneReg.TIMER_OFFSET not in restored.reg_list(0)


@pytest.mark.parametrize("profile", [ApiProfile.BY_VALUE, ApiProfile.VCPU_OFFSETS])
def test_counter_offset_flag_is_dropped_on_an_older_host(profile: ApiProfile) -> None:
    _, vm = make_vm(HostFeatures(api_profile=ApiProfile.VM_COUNTER_OFFSET), h=10_000)
    vm.set_counter_offset(7000, 0)
    state = vm.snapshot()
    same = make_host(HostFeatures(api_profile=ApiProfile.VM_COUNTER_OFFSET), h=10_000).restore_vm(state)
    assert same.counter_offset_set is True
    dst = make_host(HostFeatures(api_profile=profile), h=10_000)
    restored = dst.restore_vm(state)
    assert restored.counter_offset_set is False
    # The older kernel honours a by-value write (a 6.4+ VM with the flag would ignore it).
    restored.set_one_reg(0, OneReg.TIMER_CNT, 1234)
    assert get_reg(restored, 0, OneReg.TIMER_CNT) == 1234


@pytest.mark.parametrize(
    "dst_features",
    [
        pytest.param(HostFeatures(ecv=EcvLevel.NI, vhe=False), id="nvhe-ecv0"),
        pytest.param(HostFeatures(ecv=EcvLevel.IMP, vhe=True), id="vhe-ecv1"),
        pytest.param(HostFeatures(ecv=EcvLevel.CNTPOFF, vhe=True), id="vhe-ecv2"),
    ],
)
def test_migrate_while_pending(dst_features: HostFeatures) -> None:
    clock = ManualClock()
    src = Host("src", HostFeatures(ecv=EcvLevel.CNTPOFF, vhe=True), clock, counter_base=5000)
    dst = Host("dst", dst_features, clock, counter_base=90_000)
    vm = src.create_vm("vm")
    vm.create_vcpu(0)
    vm.set_counter_offset(1000, 0)  # both guest counters 4000
    vm.set_regs(
        [
            (0, OneReg.TIMER_CVAL, 4500),
            (0, OneReg.TIMER_CTL, 1),
            (0, OneReg.PTIMER_CVAL, 4600),
            (0, OneReg.PTIMER_CTL, 1),
        ]
    )
    state = vm.snapshot()
    src.destroy_vm("vm")
    dst.step_clock(100)  # 100 ticks pass in transit (realtime moves with the shared clock)
    h_d, realtime_d = dst.get_clock()
    restored = dst.restore_vm(state)
    offset = offset_for(state, h_d, realtime_d)
    assert offset == 90_100 - 4100
    restored.set_counter_offset(offset, 0)
    assert get_reg(restored, 0, OneReg.TIMER_CNT) == 4100
    assert get_reg(restored, 0, OneReg.PTIMER_CNT) == 4100
    dst.step_clock(399)
    assert (line(restored, 0, V), line(restored, 0, P)) == (False, False)
    dst.step_clock(1)
    assert (line(restored, 0, V), line(restored, 0, P)) == (True, False)
    dst.step_clock(100)
    assert (line(restored, 0, V), line(restored, 0, P)) == (True, True)
    trap = not dst_features.has_cntpoff
    assert guest(dst, restored, 0, rd(SysReg.CNTPCT_EL0))[0] == AccessResult(4600, trapped=trap)


def test_worked_example_of_section_4_2() -> None:
    t_ns = REALTIME_BASE_NS
    src = Host(
        "src",
        HostFeatures(ecv=EcvLevel.CNTPOFF, vhe=True),
        ManualClock(realtime_offset_ns=t_ns),
        counter_base=5_000_000_000,
    )
    vm = src.create_vm("vm")
    vm.create_vcpu(0)
    vm.set_counter_offset(1_000_000_000, 0)
    assert get_reg(vm, 0, OneReg.TIMER_CNT) == 4_000_000_000
    state = vm.snapshot()
    assert (state.host_counter, state.realtime_ns) == (5_000_000_000, t_ns)

    dst = Host(
        "dst",
        HostFeatures(ecv=EcvLevel.NI, vhe=True),
        ManualClock(realtime_offset_ns=t_ns + 2_500_000_000),
        counter_base=90_000_000_000,
    )
    restored = dst.restore_vm(state)
    h_d, rt_d = dst.get_clock()
    offset = offset_for(state, h_d, rt_d)
    assert offset == 85_937_500_000
    restored.set_counter_offset(offset, 0)
    assert get_reg(restored, 0, OneReg.TIMER_CNT) == 4_062_500_000
    assert get_reg(restored, 0, OneReg.PTIMER_CNT) == 4_062_500_000
    assert restored.traps.trap_cntpct is True  # poffset != 0 without CNTPOFF

    # Case 37: host counter and realtime advance together, so re-applying 0.5 s later
    # computes the same offset...
    dst.step_clock(12_500_000)
    h_d, rt_d = dst.get_clock()
    assert (h_d, rt_d) == (90_012_500_000, t_ns + 3_000_000_000)
    assert offset_for(state, h_d, rt_d) == 85_937_500_000
    # ...while a by-value restore of the value computed at T+2.5 s, issued at T+3.0 s,
    # leaves the guest 12,500,000 ticks behind.
    late = make_host(HostFeatures(ecv=EcvLevel.NI, vhe=True, api_profile=ApiProfile.BY_VALUE), h=h_d)
    by_value = late.restore_vm(state)
    by_value.set_one_reg(0, OneReg.TIMER_CNT, 4_062_500_000)
    assert get_reg(restored, 0, OneReg.TIMER_CNT) - by_value.get_one_reg(0, OneReg.TIMER_CNT) == 12_500_000


def test_negative_elapsed_is_clamped_so_the_counter_never_goes_back() -> None:
    _, vm = make_vm(h=5000)
    vm.set_counter_offset(1000, 0)
    state = vm.snapshot()
    dst = make_host(h=90_000)
    restored = dst.restore_vm(state)
    offset = offset_for(state, 90_000, state.realtime_ns - 200_000_000)  # destination 0.2 s behind
    restored.set_counter_offset(offset, 0)
    assert get_reg(restored, 0, OneReg.TIMER_CNT) == 4000
    assert fingerprint(restored)[0] == dataclasses.replace(
        state, voffset=86_000, poffset=86_000, host_counter=90_000, realtime_ns=dst.get_clock()[1]
    )


def test_nv_el2_timer_state_survives() -> None:
    features = HostFeatures(nv=True)
    src, vm = make_vm(features, h=100)
    vm.set_attr(0, KVM_ARM_VCPU_TIMER_CTRL, TimerAttr.IRQ_HVTIMER, 24)
    vm.vcpu(0).timer(HV).cval = 9
    vm.vcpu(0).timer(HP).ctl = 1
    state = vm.snapshot()
    assert state.vcpus[0].timers[2:] == (TimerState(HV, 0, 9), TimerState(HP, 1, 0))
    restored = Host("dst", features, src.counter.clock, counter_base=100).restore_vm(state)
    assert restored.snapshot() == state
    assert restored.irq_levels(0)[3].level is True
    assert restored.ppis == [27, 30, 24, 26]
