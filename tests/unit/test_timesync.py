"""Applying a source's counter record on the destination at one instant (spec §4.2, cases 36-39).

Edge cases covered:
- case 36 on every offset-capable profile and host mode: offsets, both counters, the
  CNTPCT trap on a non-ECV destination, the credited ticks and the pair used
- case 37: applying the same record again later gives the same offsets (idempotent);
  BY_VALUE 0.5 s later leaves the guest 12,500,000 ticks behind
- case 39: destination realtime 0.2 s behind (skew): 2.3 s credited, 5,000,000 short;
  destination realtime behind the source's read: 0 credited (clamp), never backwards
- VM_COUNTER_OFFSET with CNTVCT != CNTPCT: both counters by value at the apply instant
- BY_VALUE on every profile (PTIMER_CNT only where the kernel can write it)
- refusals change nothing: running VM, vCPU inside KVM_RUN, no vCPU, CNTFRQ mismatch,
  method the kernel lacks, unknown method, values beyond u64, by-value writes that the
  6.4 kernel would ignore
- a credit is reported against the destination's own clock, whatever its skew or drift
"""

from __future__ import annotations

import pytest

from node.core.clock import NS_PER_S, U64_MASK, ClockEffects, ManualClock
from node.core.errors import BadRequest, Busy, InvalidArgument, VcpuNotFound
from node.core.features import ApiProfile, EcvLevel, HostFeatures
from node.core.host import Host
from node.core.timesync import CounterRecord, RestoreMethod, apply_record
from node.core.uapi import OneReg
from node.core.vm import Vm
from tests.unit.conftest import ALL_FEATURES, COUNTER_OFFSET_FEATURES, feature_params

T_NS = 1_700_000_000 * NS_PER_S
HZ = 25_000_000
CASE36 = CounterRecord(
    cntvct=4_000_000_000, cntpct=4_000_000_000, host_counter=5_000_000_000, realtime_ns=T_NS, cntfrq_hz=HZ
)
OFFSET_FEATURES = feature_params(
    HostFeatures(ecv=EcvLevel(ecv), vhe=vhe, api_profile=profile)
    for ecv in (0, 1, 2)
    for vhe in (False, True)
    for profile in (ApiProfile.VCPU_OFFSETS, ApiProfile.VM_COUNTER_OFFSET)
)
METHOD_OF = {
    ApiProfile.VCPU_OFFSETS: RestoreMethod.VCPU_OFFSETS,
    ApiProfile.VM_COUNTER_OFFSET: RestoreMethod.VM_COUNTER_OFFSET,
}


def destination(
    features: HostFeatures,
    *,
    h: int = 90_000_000_000,
    realtime_ns: int = T_NS + 2_500_000_000,
    skew_ns: int = 0,
) -> tuple[ManualClock, Host, Vm]:
    """A paused destination VM with one vCPU, on a host reading (h, realtime_ns) now."""
    clock = ManualClock(realtime_offset_ns=realtime_ns - skew_ns)
    host = Host("dst", features, clock, counter_base=h, clock_effects=ClockEffects(skew_ns=skew_ns))
    vm = host.create_vm("g")
    vm.create_vcpu(0)
    assert host.get_clock() == (h, realtime_ns)
    return clock, host, vm


def guest_counters(vm: Vm) -> tuple[int, int]:
    h = vm.counter.read()
    return vm.cntvct(h), vm.cntpct(h)


@pytest.mark.parametrize("features", OFFSET_FEATURES)
def test_case36_offsets_counters_and_traps(features: HostFeatures) -> None:
    _, _, vm = destination(features)
    credit = apply_record(vm, CASE36, METHOD_OF[features.api_profile])
    assert (credit.host_counter, credit.realtime_ns) == (90_000_000_000, T_NS + 2_500_000_000)
    assert (credit.elapsed_ns, credit.elapsed_ticks) == (2_500_000_000, 62_500_000)
    assert (vm.voffset, vm.poffset) == (85_937_500_000, 85_937_500_000)
    assert (credit.voffset, credit.poffset) == (vm.voffset, vm.poffset)
    assert guest_counters(vm) == (4_062_500_000, 4_062_500_000) == (credit.cntvct, credit.cntpct)
    # poffset != 0: trapped unless CNTPOFF_EL2 carries it (VHE + ECV 2).
    assert vm.traps.trap_cntpct is not features.has_cntpoff
    if features.api_profile is ApiProfile.VM_COUNTER_OFFSET:
        assert credit.applied_as == "KVM_ARM_SET_COUNTER_OFFSET" and vm.counter_offset_set
    else:
        assert vm.vtimer_offset_enabled and vm.get_one_reg(0, OneReg.TIMER_OFFSET) == 0


@pytest.mark.parametrize("features", OFFSET_FEATURES)
def test_case37_applying_again_later_gives_the_same_offsets(features: HostFeatures) -> None:
    clock, _, vm = destination(features)
    first = apply_record(vm, CASE36, METHOD_OF[features.api_profile])
    clock.advance_ns(500_000_000)
    again = apply_record(vm, CASE36, METHOD_OF[features.api_profile])
    assert (again.host_counter, again.realtime_ns) == (90_012_500_000, T_NS + 3_000_000_000)
    assert again.elapsed_ticks == 75_000_000
    assert (again.voffset, again.poffset) == (first.voffset, first.poffset) == (85_937_500_000,) * 2


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_case37_by_value_half_a_second_later_lags(features: HostFeatures) -> None:
    clock, _, vm = destination(features)
    clock.advance_ns(500_000_000)
    credit = apply_record(vm, CASE36, RestoreMethod.BY_VALUE)
    assert credit.elapsed_ticks == 0
    assert vm.cntvct(credit.host_counter) == 4_000_000_000
    # Real time says 4,075,000,000 now: the guest lags by the 0.5 s (12.5M ticks) plus the 2.5 s.
    assert 4_075_000_000 - vm.cntvct(vm.counter.read()) == 75_000_000
    if features.has_ptimer_cnt_write:
        assert vm.cntpct(credit.host_counter) == 4_000_000_000
    else:
        assert vm.poffset == 0  # PTIMER_CNT cannot be written before 6.4


@pytest.mark.parametrize("features", OFFSET_FEATURES)
def test_case39_skewed_destination_credits_its_own_clock(features: HostFeatures) -> None:
    _, _, vm = destination(features, realtime_ns=T_NS + 2_300_000_000, skew_ns=-200_000_000)
    credit = apply_record(vm, CASE36, METHOD_OF[features.api_profile])
    assert (credit.elapsed_ns, credit.elapsed_ticks) == (2_300_000_000, 57_500_000)
    assert 4_062_500_000 - guest_counters(vm)[0] == 5_000_000


@pytest.mark.parametrize("features", OFFSET_FEATURES)
@pytest.mark.parametrize("behind_ns", [1, 40, 200_000_000, 3 * NS_PER_S])
def test_case39_negative_elapsed_is_clamped_never_backwards(features: HostFeatures, behind_ns: int) -> None:
    clock, _, vm = destination(features, realtime_ns=T_NS - behind_ns)
    credit = apply_record(vm, CASE36, METHOD_OF[features.api_profile])
    assert (credit.elapsed_ns, credit.elapsed_ticks) == (-behind_ns, 0)
    assert guest_counters(vm) == (4_000_000_000, 4_000_000_000)
    clock.advance_ns(40)
    assert guest_counters(vm) == (4_000_000_001, 4_000_000_001)


@pytest.mark.parametrize("features", COUNTER_OFFSET_FEATURES)
def test_counter_offset_method_with_differing_counters_writes_both_at_the_instant(
    features: HostFeatures,
) -> None:
    clock, _, vm = destination(features)
    record = CounterRecord(
        cntvct=4_000_000_000, cntpct=4_900_000_000, host_counter=5_000_000_000, realtime_ns=T_NS, cntfrq_hz=HZ
    )
    credit = apply_record(vm, record, RestoreMethod.VM_COUNTER_OFFSET)
    assert credit.applied_as.startswith("TIMER_CNT+PTIMER_CNT") and not vm.counter_offset_set
    assert guest_counters(vm) == (4_062_500_000, 4_962_500_000) == (credit.cntvct, credit.cntpct)
    clock.advance_ns(NS_PER_S)
    assert guest_counters(vm) == (4_087_500_000, 4_987_500_000)


def test_counter_offset_wraps_modulo_2_64() -> None:
    _, _, vm = destination(HostFeatures(), h=10)
    record = CounterRecord(
        cntvct=U64_MASK - 5,
        cntpct=U64_MASK - 5,
        host_counter=0,
        realtime_ns=T_NS + 2_500_000_000,
        cntfrq_hz=HZ,
    )
    credit = apply_record(vm, record, RestoreMethod.VM_COUNTER_OFFSET)
    assert credit.elapsed_ticks == 0 and guest_counters(vm) == (U64_MASK - 5, U64_MASK - 5)
    assert vm.voffset == 16


def snapshot(vm: Vm) -> tuple[object, ...]:
    return (vm.voffset, vm.poffset, vm.counter_offset_set, vm.vtimer_offset_enabled, vm.running)


@pytest.mark.parametrize(
    ("features", "method", "record", "error"),
    [
        (HostFeatures(), 7, CASE36, InvalidArgument),
        (
            HostFeatures(api_profile=ApiProfile.BY_VALUE),
            RestoreMethod.VM_COUNTER_OFFSET,
            CASE36,
            InvalidArgument,
        ),
        (HostFeatures(api_profile=ApiProfile.BY_VALUE), RestoreMethod.VCPU_OFFSETS, CASE36, InvalidArgument),
        (HostFeatures(), RestoreMethod.VCPU_OFFSETS, CASE36, InvalidArgument),
        (
            HostFeatures(api_profile=ApiProfile.VCPU_OFFSETS),
            RestoreMethod.VM_COUNTER_OFFSET,
            CASE36,
            InvalidArgument,
        ),
        (
            HostFeatures(cntfrq_hz=1_000_000_000),
            RestoreMethod.VM_COUNTER_OFFSET,
            CASE36,
            InvalidArgument,
        ),
        (
            HostFeatures(),
            RestoreMethod.BY_VALUE,
            CounterRecord(1 << 64, 0, 0, T_NS, HZ),
            BadRequest,
        ),
    ],
)
def test_refusals_change_nothing(
    features: HostFeatures, method: int, record: CounterRecord, error: type[Exception]
) -> None:
    _, _, vm = destination(features)
    before = snapshot(vm)
    with pytest.raises(error):
        apply_record(vm, record, method)
    assert snapshot(vm) == before


@pytest.mark.parametrize("method", list(RestoreMethod))
def test_running_or_in_run_vm_is_refused(method: RestoreMethod) -> None:
    features = HostFeatures(
        api_profile=ApiProfile.VCPU_OFFSETS if method == 2 else ApiProfile.VM_COUNTER_OFFSET
    )
    _, _, vm = destination(features)
    vm.resume()
    before = snapshot(vm)
    with pytest.raises(Busy):
        apply_record(vm, CASE36, method)
    assert snapshot(vm) == before
    vm.pause()
    vcpu = vm.enter_run(0)
    with pytest.raises(Busy):
        apply_record(vm, CASE36, method)
    vm.exit_run(vcpu)
    assert snapshot(vm)[:4] == before[:4]


def test_a_vm_without_vcpus_is_refused() -> None:
    host = Host("dst", HostFeatures(), ManualClock())
    vm = host.create_vm("g")
    with pytest.raises(VcpuNotFound):
        apply_record(vm, CASE36, RestoreMethod.VM_COUNTER_OFFSET)
    assert not vm.counter_offset_set


def test_differing_counters_on_a_vm_whose_counter_offset_is_set_are_refused() -> None:
    _, _, vm = destination(HostFeatures())
    vm.set_counter_offset(123, 0)
    record = CounterRecord(1, 2, 0, T_NS, HZ)
    with pytest.raises(InvalidArgument):
        apply_record(vm, record, RestoreMethod.VM_COUNTER_OFFSET)
    assert (vm.voffset, vm.poffset) == (123, 123)


def test_drifting_destination_credits_its_drifted_realtime() -> None:
    clock = ManualClock(realtime_offset_ns=T_NS)
    host = Host("dst", HostFeatures(), clock, counter_base=7, clock_effects=ClockEffects(drift_ppm=100.0))
    vm = host.create_vm("g")
    vm.create_vcpu(0)
    clock.advance_ns(10 * NS_PER_S)  # the host's realtime gained 1 ms
    credit = apply_record(vm, CASE36, RestoreMethod.VM_COUNTER_OFFSET)
    assert credit.realtime_ns == T_NS + 10 * NS_PER_S + 1_000_000
    assert credit.elapsed_ticks == (10 * NS_PER_S + 1_000_000) * HZ // NS_PER_S
