"""Hypothesis invariants of the offset and timer arithmetic.

- offsets compose: TimerOffset(vm, vcpu).total() wraps mod 2^64 and equals applying the parts in turn
- cval/tval wrap: TVAL is the low 32 bits of CVAL - now; a TVAL write round-trips through a read;
  the condition after a TVAL write follows the sign unless CVAL wrapped past 2^64
- ticks_until_fire predicts the exact host tick at which a VM's line rises
- guest CNTVCT is monotonic and continuous (1:1 with the steps) for random clock steps,
  any CNTFRQ and any host counter base (including one that wraps)
- a by-value TIMER_CNT / PTIMER_CNT write reads back exactly at any host counter
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from node.core.clock import ManualClock
from node.core.features import ALL_FEATURE_COMBINATIONS, HostFeatures
from node.core.host import Host
from node.core.timer import (
    TimerId,
    TimerOffset,
    condition_met,
    should_fire,
    sign_extend32,
    ticks_until_fire,
    tval_read,
    tval_write,
)
from node.core.uapi import OneReg
from node.core.vcpu import SysReg
from tests.unit.conftest import get_reg, set_reg

U64 = 1 << 64
u64s = st.integers(min_value=0, max_value=U64 - 1)
u32s = st.integers(min_value=0, max_value=(1 << 32) - 1)
features_st = st.sampled_from(ALL_FEATURE_COMBINATIONS)


def signed64(value: int) -> int:
    return value - U64 if value >= 1 << 63 else value


@settings(max_examples=200)
@given(vm=u64s, vcpu=u64s, h=u64s)
def test_offsets_compose_modulo_2_64(vm: int, vcpu: int, h: int) -> None:
    total = TimerOffset(vm=vm, vcpu=vcpu).total()
    assert 0 <= total < U64
    assert total == (vm + vcpu) % U64
    assert total == TimerOffset(vm=vcpu, vcpu=vm).total()
    assert TimerOffset(vm=vm).total() == vm
    assert TimerOffset(vcpu=vcpu).total() == vcpu
    # Subtracting the total from H equals subtracting the VM part, then the vCPU part.
    assert (h - total) % U64 == ((h - vm) % U64 - vcpu) % U64


@settings(max_examples=200)
@given(cval=u64s, now=u64s)
def test_tval_read_is_the_low_32_bits_of_the_distance(cval: int, now: int) -> None:
    tval = tval_read(cval, now)
    assert tval == ((cval - now) % U64) % (1 << 32)
    rewritten = tval_write(tval, now)
    assert (rewritten - cval) % (1 << 32) == 0
    if -(1 << 31) <= signed64((cval - now) % U64) < 1 << 31:
        assert rewritten == cval  # within the TVAL range the write reproduces CVAL


@settings(max_examples=200)
@given(value=u64s, now=u64s)
def test_tval_write_wraps_and_round_trips(value: int, now: int) -> None:
    cval = tval_write(value, now)
    delta = sign_extend32(value)
    assert -(1 << 31) <= delta < 1 << 31
    assert cval == (now + delta) % U64
    assert tval_read(cval, now) == value & 0xFFFF_FFFF
    wrapped = not 0 <= now + delta < U64
    # Unsigned compare: a CVAL wrapped past 2^64 flips the naive "TVAL <= 0 means expired".
    assert condition_met(cval, now) is ((delta <= 0) != wrapped)


@settings(max_examples=200)
@given(ctl=st.integers(min_value=0, max_value=7), cval=u64s, now=u64s)
def test_should_fire_iff_zero_ticks_until_fire(ctl: int, cval: int, now: int) -> None:
    until = ticks_until_fire(ctl, cval, now)
    assert should_fire(ctl, cval, now) is (until == 0)
    if until:
        assert now + until == cval  # the first counter value meeting the condition
        assert not should_fire(ctl, cval, now + until - 1)
    if until is not None:
        assert should_fire(ctl, cval, now + until)


@settings(max_examples=100)
@given(
    features=features_st,
    base=u64s,
    cnt=u64s,
    distance=st.integers(min_value=1, max_value=10**7),
    physical=st.booleans(),
)
def test_line_rises_exactly_when_predicted(
    features: HostFeatures, base: int, cnt: int, distance: int, physical: bool
) -> None:
    host = Host("n", features, ManualClock(), counter_base=base)
    vm = host.create_vm("vm")
    vm.create_vcpu(0)
    timer = TimerId.PTIMER if physical else TimerId.VTIMER
    if not physical:
        vm.set_one_reg(0, OneReg.TIMER_CNT, cnt)
    now = get_reg(vm, 0, OneReg.PTIMER_CNT if physical else OneReg.TIMER_CNT)
    cval = (now + distance) % U64
    ctl_reg, cval_reg = (
        (OneReg.PTIMER_CTL, OneReg.PTIMER_CVAL) if physical else (OneReg.TIMER_CTL, OneReg.TIMER_CVAL)
    )
    set_reg(vm, 0, cval_reg, cval)
    set_reg(vm, 0, ctl_reg, 1)
    ctx = vm.vcpu(0).timer(timer)
    predicted = ticks_until_fire(ctx.ctl, ctx.cval, now)
    level = {lvl.timer_id: lvl.level for lvl in vm.irq_levels(0)}
    if cval < now:  # CVAL wrapped past 2^64: the condition already holds
        assert (predicted, level[timer]) == (0, True)
        return
    assert predicted == distance
    host.step_clock(distance - 1)
    assert {lvl.timer_id: lvl.level for lvl in vm.irq_levels(0)}[timer] is False
    host.step_clock(1)
    assert {lvl.timer_id: lvl.level for lvl in vm.irq_levels(0)}[timer] is True


@settings(max_examples=200)
@given(
    cntfrq_hz=st.sampled_from([1, 3, 19_200_000, 24_000_000, 25_000_000, 1_000_000_000]),
    features=features_st,
    base=u64s,
    steps=st.lists(st.integers(min_value=0, max_value=10**9), max_size=20),
)
def test_guest_cntvct_is_monotonic_and_continuous(
    cntfrq_hz: int, features: HostFeatures, base: int, steps: list[int]
) -> None:
    features = HostFeatures(
        cntfrq_hz=cntfrq_hz, ecv=features.ecv, vhe=features.vhe, api_profile=features.api_profile
    )
    host = Host("n", features, ManualClock(), counter_base=base)
    vm = host.create_vm("vm")
    vcpu = vm.create_vcpu(0)
    previous = vm.guest_read(vcpu, SysReg.CNTVCT_EL0).value
    assert previous == 0  # the virtual counter starts at 0 at vCPU creation
    for step in steps:
        h_before = host.counter.read()
        assert host.step_clock(step) == (h_before + step) % U64
        current = vm.guest_read(vcpu, SysReg.CNTVCT_EL0).value
        assert current - previous == step
        assert vm.guest_read(vcpu, SysReg.CNTPCT_EL0).value == host.counter.read()
        previous = current


@settings(max_examples=200)
@given(features=features_st, base=u64s, cnt=u64s, pcnt=u64s, step=st.integers(0, 10**6))
def test_by_value_counter_writes_read_back(
    features: HostFeatures, base: int, cnt: int, pcnt: int, step: int
) -> None:
    host = Host("n", features, ManualClock(), counter_base=base)
    vm = host.create_vm("vm")
    vm.create_vcpu(0)
    vm.set_one_reg(0, OneReg.TIMER_CNT, cnt)
    assert vm.voffset == (base - cnt) % U64
    if features.has_ptimer_cnt_write:
        vm.set_one_reg(0, OneReg.PTIMER_CNT, pcnt)
        assert vm.poffset == (base - pcnt) % U64
    else:
        pcnt = base
    host.step_clock(step)
    assert vm.get_one_reg(0, OneReg.TIMER_CNT) == (cnt + step) % U64
    assert get_reg(vm, 0, OneReg.PTIMER_CNT) == (pcnt + step) % U64
