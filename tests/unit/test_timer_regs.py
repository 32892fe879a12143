"""Timer registers CTL/CVAL/TVAL and the output line: spec §1.1 and conformance cases 7-15.

Edge cases covered:
- ISTATUS dropped on write, recomputed on read, set even with ENABLE=0 (cases 7, 8, 13)
- CVAL stored raw, offsets untouched (case 9)
- TVAL read is the low 32 bits of CVAL - now; TVAL write sign-extends (cases 10, 11)
- CVAL beyond the TVAL range: TVAL shows only the low 32 bits, the timer fires at CVAL
- timers in the past (CVAL far below the counter, TVAL written negative) fire at once
- the line is a level: high exactly from CVAL (case 12), dropped by IMASK (case 13),
  by reprogramming CVAL/TVAL (case 14) and by disabling; nothing latched
- counter moved under a pending timer (by-value TIMER_CNT, PTIMER_CNT, counter-offset
  ioctl, series physical offset) raises or drops the line at once
- 64-bit wrap: unsigned compare, CVAL wrapped past 2^64 by a TVAL write, counter wrapping
- vCPU reset clears CTL only (case 15); refused inside KVM_RUN
- ptimer compares against CNTPCT (poffset), vtimer against CNTVCT (voffset)
- NV hosts report four lines with PPIs 27/30/28/26
"""

from __future__ import annotations

import pytest

from node.core.errors import Busy
from node.core.features import ApiProfile, HostFeatures
from node.core.timer import (
    CTL_ENABLE,
    CTL_IMASK,
    CTL_ISTATUS,
    TimerContext,
    TimerId,
    TimerReg,
    condition_met,
    read_ctl,
    should_fire,
    sign_extend32,
    store_ctl,
    ticks_until_fire,
    timer_read,
    timer_write,
    tval_read,
    tval_write,
)
from node.core.uapi import KVM_ARM_VCPU_TIMER_CTRL, KVM_ARM_VCPU_TIMER_PHYS_OFFSET, OneReg
from node.core.vcpu import SysReg
from node.core.vm import IrqLevel
from tests.unit.conftest import (
    ALL_FEATURES,
    COUNTER_OFFSET_FEATURES,
    advance_to,
    fingerprint,
    get_reg,
    guest,
    guest_values,
    line,
    make_vm,
    rd,
    set_poffset,
    set_reg,
    wait,
    wr,
)

U64 = 1 << 64
V, P = TimerId.VTIMER, TimerId.PTIMER

# --- pure rules --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (0x7FFF_FFFF, 0x7FFF_FFFF),
        (0x8000_0000, -(1 << 31)),
        (0xFFFF_FFFF, -1),
        (0xFFFF_FFF6, -10),
        (0x1_0000_0010, 0x10),  # bits above 31 are ignored
    ],
)
def test_sign_extend32(value: int, expected: int) -> None:
    assert sign_extend32(value) == expected


@pytest.mark.parametrize(
    ("cval", "now", "tval"),
    [
        (1000, 900, 0x64),  # case 10
        (1000, 1100, 0xFFFF_FF9C),  # case 10: 100 ticks in the past
        (1000, 1000, 0),
        (900 + (1 << 32) + 5, 900, 5),  # CVAL beyond the TVAL range: low 32 bits only
        (900 + (1 << 31), 900, 0x8000_0000),  # reads as most-negative although in the future
        (900 - (1 << 32), 900, 0),  # 2^32 ticks in the past reads 0
        (0, U64 - 1, 1),  # distance wraps through 2^64
        (U64 - 1, 0, 0xFFFF_FFFF),
    ],
)
def test_tval_read_table(cval: int, now: int, tval: int) -> None:
    assert tval_read(cval, now) == tval


@pytest.mark.parametrize(
    ("value", "now", "cval"),
    [
        (0xFFFF_FFF6, 5000, 4990),  # case 11
        (0x10, 5000, 5016),  # case 11
        (0x7FFF_FFFF, 0, 0x7FFF_FFFF),
        (0x8000_0000, 0, U64 - (1 << 31)),  # negative TVAL at 0 wraps below 0
        (0x10, U64 - 8, 8),  # positive TVAL wraps past 2^64
        (0x1_0000_0010, 5000, 5016),  # only the low 32 bits count
        (0, 77, 77),
    ],
)
def test_tval_write_table(value: int, now: int, cval: int) -> None:
    assert tval_write(value, now) == cval


@pytest.mark.parametrize(
    ("cval", "now", "met"),
    [
        (100, 99, False),
        (100, 100, True),
        (100, 101, True),
        (1 << 63, 1, False),  # unsigned: 2^63 is not "negative"
        (1, 1 << 63, True),
        (U64 - 1, U64 - 2, False),
        (0, 0, True),
    ],
)
def test_condition_is_unsigned_now_ge_cval(cval: int, now: int, met: bool) -> None:
    assert condition_met(cval, now) is met


@pytest.mark.parametrize(
    ("ctl", "cval", "now", "read", "fire", "until"),
    [
        (0x0, 100, 150, 0x4, False, None),  # disabled, condition met: ISTATUS still set (case 8)
        (0x1, 100, 150, 0x5, True, 0),
        (0x3, 100, 150, 0x7, False, None),  # masked (case 13)
        (0x2, 100, 150, 0x6, False, None),
        (0x1, 200, 150, 0x1, False, 50),
        (0x1, 150, 150, 0x5, True, 0),  # equality fires
        (0x1, 151, 150, 0x1, False, 1),
        (0x1, 0, 150, 0x5, True, 0),  # far in the past
        (0x1, U64 - 1, 150, 0x1, False, U64 - 151),
        (0x3, 200, 150, 0x3, False, None),
    ],
)
def test_ctl_read_and_line_rules(
    ctl: int, cval: int, now: int, read: int, fire: bool, until: int | None
) -> None:
    assert read_ctl(ctl, cval, now) == read
    assert should_fire(ctl, cval, now) is fire
    assert ticks_until_fire(ctl, cval, now) == until


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        (0x7, 0x3),
        (0x4, 0x0),
        (0xFFFF_FFFF, 0xFFFF_FFFB),
        (0x1_0000_0001, 0x1),  # CTL is 32-bit
        (0xFFFF_FFFF_FFFF_FFFF, 0xFFFF_FFFB),
    ],
)
def test_store_ctl_drops_istatus_and_high_bits(written: int, stored: int) -> None:
    assert store_ctl(written) == stored


def test_ctl_bit_values() -> None:
    assert (CTL_ENABLE, CTL_IMASK, CTL_ISTATUS) == (1, 2, 4)


# --- conformance cases 7-15 ----------------------------------------------------


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_case07_istatus_is_discarded_on_write(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=500)
    set_reg(vm, 0, OneReg.TIMER_CVAL, 1000)  # guest count 0: CVAL in the future
    set_reg(vm, 0, OneReg.TIMER_CTL, 0x7)
    assert vm.vcpu(0).timer(V).ctl == 0x3
    assert get_reg(vm, 0, OneReg.TIMER_CTL) == 0x3
    set_reg(vm, 0, OneReg.PTIMER_CVAL, 1000)  # guest CNTPCT = 500
    set_reg(vm, 0, OneReg.PTIMER_CTL, 0x7)
    assert get_reg(vm, 0, OneReg.PTIMER_CTL) == 0x3
    # The guest's MSR drops it the same way.
    guest(host, vm, 0, wr(SysReg.CNTV_CTL_EL0, 0x5), wr(SysReg.CNTP_CTL_EL0, 0x5))
    assert (vm.vcpu(0).timer(V).ctl, vm.vcpu(0).timer(P).ctl) == (0x1, 0x1)


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_case08_istatus_reported_when_disabled(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=0)
    set_reg(vm, 0, OneReg.TIMER_CTL, 0)
    set_reg(vm, 0, OneReg.TIMER_CVAL, 100)
    advance_to(host, 150)
    assert get_reg(vm, 0, OneReg.TIMER_CTL) == 0x4
    assert guest_values(host, vm, 0, rd(SysReg.CNTV_CTL_EL0)) == [0x4]
    assert line(vm, 0, V) is False


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_case09_cval_is_stored_raw_and_leaves_offsets_alone(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=1000, vcpus=2)
    set_reg(vm, 0, OneReg.TIMER_CNT, 77)
    offsets = (vm.voffset, vm.poffset)
    set_reg(vm, 0, OneReg.TIMER_CVAL, 0xDEAD_BEEF)
    set_reg(vm, 0, OneReg.PTIMER_CVAL, 0xFFFF_FFFF_FFFF_FFFF)
    assert get_reg(vm, 0, OneReg.TIMER_CVAL) == 0xDEAD_BEEF
    assert get_reg(vm, 0, OneReg.PTIMER_CVAL) == 0xFFFF_FFFF_FFFF_FFFF
    assert (vm.voffset, vm.poffset) == offsets
    assert get_reg(vm, 0, OneReg.TIMER_CNT) == 77
    assert get_reg(vm, 1, OneReg.TIMER_CVAL) == 0  # per-vCPU register
    assert guest_values(host, vm, 0, rd(SysReg.CNTV_CVAL_EL0)) == [0xDEAD_BEEF]


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_case10_tval_read(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=0)  # guest count == H
    set_reg(vm, 0, OneReg.TIMER_CVAL, 1000)
    advance_to(host, 900)
    assert guest_values(host, vm, 0, rd(SysReg.CNTV_TVAL_EL0)) == [0x0000_0064]
    advance_to(host, 1100)
    assert guest_values(host, vm, 0, rd(SysReg.CNTV_TVAL_EL0)) == [0xFFFF_FF9C]


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_case11_tval_write(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=5000)
    set_reg(vm, 0, OneReg.TIMER_CNT, 5000)
    results = guest(host, vm, 0, wr(SysReg.CNTV_TVAL_EL0, 0xFFFF_FFF6), rd(SysReg.CNTV_CTL_EL0))
    assert get_reg(vm, 0, OneReg.TIMER_CVAL) == 4990
    assert results[1].value == CTL_ISTATUS
    assert get_reg(vm, 0, OneReg.TIMER_CTL) == CTL_ISTATUS
    guest(host, vm, 0, wr(SysReg.CNTV_TVAL_EL0, 0x10))
    assert get_reg(vm, 0, OneReg.TIMER_CVAL) == 5016
    assert get_reg(vm, 0, OneReg.TIMER_CTL) == 0


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_case12_line_rises_exactly_at_cval(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=1000)  # voffset = 1000
    set_reg(vm, 0, OneReg.TIMER_CTL, 0x1)
    set_reg(vm, 0, OneReg.TIMER_CVAL, 2000)
    advance_to(host, 2999)
    assert vm.irq_levels(0) == [IrqLevel(V, 27, False), IrqLevel(P, 30, False)]
    advance_to(host, 3000)
    assert vm.irq_levels(0) == [IrqLevel(V, 27, True), IrqLevel(P, 30, False)]


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_case13_imask_keeps_the_line_low_but_istatus_set(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=0)
    set_reg(vm, 0, OneReg.TIMER_CVAL, 100)
    set_reg(vm, 0, OneReg.TIMER_CTL, 0x3)
    advance_to(host, 150)
    assert line(vm, 0, V) is False
    assert get_reg(vm, 0, OneReg.TIMER_CTL) == 0x7
    # Unmasking raises it at once (the condition never latched or went away).
    run = host.run_vcpu(vm.vm_id, 0, [wr(SysReg.CNTV_CTL_EL0, 0x1)])
    assert run.irq_levels[0] == IrqLevel(V, 27, True)
    # Masking again drops it at once.
    run = host.run_vcpu(vm.vm_id, 0, [wr(SysReg.CNTV_CTL_EL0, 0x3)])
    assert run.irq_levels[0] == IrqLevel(V, 27, False)


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_case14_level_semantics_when_cval_moves_to_the_future(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=0)
    set_reg(vm, 0, OneReg.TIMER_CTL, 0x1)
    set_reg(vm, 0, OneReg.TIMER_CVAL, 2000)
    advance_to(host, 2500)
    assert line(vm, 0, V) is True
    run = host.run_vcpu(vm.vm_id, 0, [wr(SysReg.CNTV_CVAL_EL0, 10_000)])
    assert run.irq_levels[0].level is False
    advance_to(host, 9999)
    assert line(vm, 0, V) is False
    advance_to(host, 10_000)
    assert line(vm, 0, V) is True


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_case15_vcpu_reset_clears_ctl_only(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=1000, vcpus=2)
    set_reg(vm, 0, OneReg.TIMER_CNT, 0)
    for reg_ctl, reg_cval in ((OneReg.TIMER_CTL, OneReg.TIMER_CVAL), (OneReg.PTIMER_CTL, OneReg.PTIMER_CVAL)):
        set_reg(vm, 0, reg_cval, 100)
        set_reg(vm, 0, reg_ctl, 0x1)
        set_reg(vm, 1, reg_ctl, 0x1)
    advance_to(host, 1150)  # CNTVCT 150, CNTPCT 1150: both CVALs passed
    offsets = (vm.voffset, vm.poffset)
    assert (line(vm, 0, V), line(vm, 0, P)) == (True, True)
    vm.reset_vcpu(0)
    assert [t.ctl for t in vm.vcpu(0).timers] == [0, 0, 0, 0]
    assert get_reg(vm, 0, OneReg.TIMER_CTL) == 0x4
    assert get_reg(vm, 0, OneReg.PTIMER_CTL) == 0x4
    assert get_reg(vm, 0, OneReg.TIMER_CVAL) == 100
    assert get_reg(vm, 0, OneReg.PTIMER_CVAL) == 100
    assert (vm.voffset, vm.poffset) == offsets
    assert (line(vm, 0, V), line(vm, 0, P)) == (False, False)
    assert vm.vcpu(1).timer(V).ctl == 0x1  # only the reset vCPU


def test_reset_inside_kvm_run_is_busy_and_changes_nothing() -> None:
    _, vm = make_vm(h=0)
    set_reg(vm, 0, OneReg.TIMER_CTL, 0x1)
    vm.enter_run(0)
    before = fingerprint(vm)
    with pytest.raises(Busy):
        vm.reset_vcpu(0)
    assert fingerprint(vm) == before
    vm.exit_run(vm.vcpu(0))
    vm.reset_vcpu(0)
    assert vm.vcpu(0).timer(V).ctl == 0


# --- level semantics table over every host mode ----------------------------------


@pytest.mark.parametrize("features", ALL_FEATURES)
@pytest.mark.parametrize(
    ("ctl", "cval", "read", "fire"),
    [
        (0x0, 100, 0x4, False),
        (0x1, 100, 0x5, True),
        (0x3, 100, 0x7, False),
        (0x2, 100, 0x6, False),
        (0x1, 200, 0x1, False),
        (0x1, 150, 0x5, True),
        (0x1, 151, 0x1, False),
        (0x1, 0, 0x5, True),
        (0x1, U64 - 1, 0x1, False),
        (0x1, 1 << 63, 0x1, False),
    ],
)
def test_ctl_read_and_line_at_count_150(
    features: HostFeatures, ctl: int, cval: int, read: int, fire: bool
) -> None:
    host, vm = make_vm(features, h=0)
    advance_to(host, 150)  # CNTVCT == CNTPCT == 150
    results = guest(
        host,
        vm,
        0,
        wr(SysReg.CNTV_CVAL_EL0, cval),
        wr(SysReg.CNTV_CTL_EL0, ctl),
        wr(SysReg.CNTP_CVAL_EL0, cval),
        wr(SysReg.CNTP_CTL_EL0, ctl),
        rd(SysReg.CNTV_CTL_EL0),
        rd(SysReg.CNTP_CTL_EL0),
    )
    assert (results[4].value, results[5].value) == (read, read)
    assert get_reg(vm, 0, OneReg.TIMER_CTL) == read
    assert get_reg(vm, 0, OneReg.PTIMER_CTL) == read
    assert (line(vm, 0, V), line(vm, 0, P)) == (fire, fire)


# --- timers in the past, beyond the TVAL range, reprogramming ----------------------


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_timer_programmed_in_the_past_fires_immediately(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=0)
    advance_to(host, 10_000)
    results = guest(
        host,
        vm,
        0,
        wr(SysReg.CNTV_CVAL_EL0, 3),
        wr(SysReg.CNTV_CTL_EL0, 0x1),
        rd(SysReg.CNTV_TVAL_EL0),
        rd(SysReg.CNTV_CTL_EL0),
    )
    assert results[2].value == (3 - 10_000) & 0xFFFF_FFFF
    assert results[3].value == 0x5
    assert line(vm, 0, V) is True


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_cval_beyond_tval_range_fires_at_cval_not_at_tval(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=0)
    advance_to(host, 1000)
    cval = 1000 + (1 << 32) + 100
    results = guest(
        host, vm, 0, wr(SysReg.CNTV_CVAL_EL0, cval), wr(SysReg.CNTV_CTL_EL0, 1), rd(SysReg.CNTV_TVAL_EL0)
    )
    assert results[2].value == 100
    advance_to(host, 1100)
    assert line(vm, 0, V) is False
    assert guest_values(host, vm, 0, rd(SysReg.CNTV_TVAL_EL0)) == [0]
    advance_to(host, cval - 1)
    assert line(vm, 0, V) is False
    advance_to(host, cval)
    assert line(vm, 0, V) is True


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_cval_half_range_ahead_reads_negative_tval_but_is_pending(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=0)
    advance_to(host, 900)
    results = guest(
        host,
        vm,
        0,
        wr(SysReg.CNTV_CVAL_EL0, 900 + (1 << 31)),
        wr(SysReg.CNTV_CTL_EL0, 1),
        rd(SysReg.CNTV_TVAL_EL0),
        rd(SysReg.CNTV_CTL_EL0),
    )
    assert [r.value for r in results[2:]] == [0x8000_0000, 0x1]
    assert line(vm, 0, V) is False


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_reprogramming_tval_restarts_the_countdown(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=0)
    guest(host, vm, 0, wr(SysReg.CNTV_TVAL_EL0, 100), wr(SysReg.CNTV_CTL_EL0, 1))
    assert get_reg(vm, 0, OneReg.TIMER_CVAL) == 100
    run = host.run_vcpu(vm.vm_id, 0, [wait(60), wr(SysReg.CNTV_TVAL_EL0, 100), wait(99)])
    assert [r.value for r in run.results] == [60, 100, 159]
    assert get_reg(vm, 0, OneReg.TIMER_CVAL) == 160
    assert run.irq_levels[0].level is False
    run = host.run_vcpu(vm.vm_id, 0, [wait(1)])
    assert (run.host_counter, run.irq_levels[0].level) == (160, True)
    # Moving CVAL back into the past keeps it high; moving it ahead drops it.
    run = host.run_vcpu(vm.vm_id, 0, [wr(SysReg.CNTV_CVAL_EL0, 0)])
    assert run.irq_levels[0].level is True
    run = host.run_vcpu(vm.vm_id, 0, [wr(SysReg.CNTV_TVAL_EL0, 1)])
    assert run.irq_levels[0].level is False


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_disable_drops_and_reenable_raises_again(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=0)
    advance_to(host, 50)
    guest(host, vm, 0, wr(SysReg.CNTP_CVAL_EL0, 10), wr(SysReg.CNTP_CTL_EL0, 1))
    assert line(vm, 0, P) is True
    guest(host, vm, 0, wr(SysReg.CNTP_CTL_EL0, 0))
    assert line(vm, 0, P) is False
    assert get_reg(vm, 0, OneReg.PTIMER_CTL) == 0x4
    guest(host, vm, 0, wr(SysReg.CNTP_CTL_EL0, 1))
    assert line(vm, 0, P) is True


# --- counter moved under a pending timer -------------------------------------------


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_by_value_counter_write_under_pending_vtimer(features: HostFeatures) -> None:
    _, vm = make_vm(features, h=500)
    set_reg(vm, 0, OneReg.TIMER_CNT, 500)
    set_reg(vm, 0, OneReg.TIMER_CVAL, 1000)
    set_reg(vm, 0, OneReg.TIMER_CTL, 1)
    assert line(vm, 0, V) is False
    set_reg(vm, 0, OneReg.TIMER_CNT, 1000)
    assert line(vm, 0, V) is True
    set_reg(vm, 0, OneReg.TIMER_CNT, 999)
    assert line(vm, 0, V) is False
    assert get_reg(vm, 0, OneReg.TIMER_CTL) == 0x1


@pytest.mark.parametrize("features", COUNTER_OFFSET_FEATURES)
def test_ptimer_cnt_write_moves_only_the_ptimer(features: HostFeatures) -> None:
    _, vm = make_vm(features, h=500)
    set_reg(vm, 0, OneReg.TIMER_CNT, 500)
    for ctl, cval in ((OneReg.TIMER_CTL, OneReg.TIMER_CVAL), (OneReg.PTIMER_CTL, OneReg.PTIMER_CVAL)):
        set_reg(vm, 0, cval, 1000)
        set_reg(vm, 0, ctl, 1)
    set_reg(vm, 0, OneReg.PTIMER_CNT, 1000)
    assert (line(vm, 0, V), line(vm, 0, P)) == (False, True)


@pytest.mark.parametrize("features", COUNTER_OFFSET_FEATURES)
def test_counter_offset_ioctl_under_pending_timers(features: HostFeatures) -> None:
    _, vm = make_vm(features, h=500)
    for ctl, cval in ((OneReg.TIMER_CTL, OneReg.TIMER_CVAL), (OneReg.PTIMER_CTL, OneReg.PTIMER_CVAL)):
        set_reg(vm, 0, cval, 1000)
        set_reg(vm, 0, ctl, 1)
    assert (line(vm, 0, V), line(vm, 0, P)) == (False, False)
    vm.set_counter_offset(U64 - 600, 0)  # both counters jump to 1100
    assert get_reg(vm, 0, OneReg.TIMER_CNT) == 1100
    assert (line(vm, 0, V), line(vm, 0, P)) == (True, True)
    vm.set_counter_offset(0, 0)  # back to 500
    assert (line(vm, 0, V), line(vm, 0, P)) == (False, False)


def test_series_physical_offset_moves_both_counters_under_pending_timers() -> None:
    host, vm = make_vm(HostFeatures(api_profile=ApiProfile.VCPU_OFFSETS), h=1000)
    vm.set_attr(0, KVM_ARM_VCPU_TIMER_CTRL, KVM_ARM_VCPU_TIMER_PHYS_OFFSET, 200)
    assert (get_reg(vm, 0, OneReg.TIMER_CNT), get_reg(vm, 0, OneReg.PTIMER_CNT)) == (U64 - 200, 800)
    set_reg(vm, 0, OneReg.TIMER_CNT, 850)
    for ctl, cval in ((OneReg.TIMER_CTL, OneReg.TIMER_CVAL), (OneReg.PTIMER_CTL, OneReg.PTIMER_CVAL)):
        set_reg(vm, 0, cval, 900)
        set_reg(vm, 0, ctl, 1)
    assert (line(vm, 0, V), line(vm, 0, P)) == (False, False)
    # P 200 -> 100: both guest counters move forward by 100 (the guest CNTVOFF is kept).
    vm.set_attr(0, KVM_ARM_VCPU_TIMER_CTRL, KVM_ARM_VCPU_TIMER_PHYS_OFFSET, 100)
    assert (get_reg(vm, 0, OneReg.TIMER_CNT), get_reg(vm, 0, OneReg.PTIMER_CNT)) == (950, 900)
    assert (line(vm, 0, V), line(vm, 0, P)) == (True, True)
    assert host.counter.read() == 1000


@pytest.mark.parametrize("features", COUNTER_OFFSET_FEATURES)
def test_ptimer_runs_in_the_cntpct_domain(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=0x1000)
    set_poffset(vm, 0x100)  # CNTPCT = 0xF00, CNTVCT = 0
    results = guest(
        host,
        vm,
        0,
        wr(SysReg.CNTP_TVAL_EL0, 0x20),
        rd(SysReg.CNTP_CVAL_EL0),
        wr(SysReg.CNTV_TVAL_EL0, 0x20),
        rd(SysReg.CNTV_CVAL_EL0),
        wr(SysReg.CNTP_CTL_EL0, 1),
        wr(SysReg.CNTV_CTL_EL0, 1),
    )
    assert (results[1].value, results[3].value) == (0xF20, 0x20)
    advance_to(host, 0x101F)
    assert (line(vm, 0, V), line(vm, 0, P)) == (False, False)
    advance_to(host, 0x1020)
    assert (line(vm, 0, V), line(vm, 0, P)) == (True, True)


# --- 64-bit wrap -------------------------------------------------------------------


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_tval_write_wrapping_past_2_64_fires_until_the_counter_wraps(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=0)
    set_reg(vm, 0, OneReg.TIMER_CNT, U64 - 10)
    results = guest(
        host, vm, 0, wr(SysReg.CNTV_TVAL_EL0, 20), wr(SysReg.CNTV_CTL_EL0, 1), rd(SysReg.CNTV_TVAL_EL0)
    )
    assert get_reg(vm, 0, OneReg.TIMER_CVAL) == 10
    assert results[2].value == 20
    # Unsigned compare: 2^64-10 >= 10, so the line is already high.
    assert line(vm, 0, V) is True
    host.step_clock(10)  # counter wraps to 0
    assert get_reg(vm, 0, OneReg.TIMER_CNT) == 0
    assert line(vm, 0, V) is False
    host.step_clock(9)
    assert line(vm, 0, V) is False
    host.step_clock(1)
    assert line(vm, 0, V) is True


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_negative_tval_below_zero_wraps_to_a_far_future_cval(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=5)
    set_reg(vm, 0, OneReg.TIMER_CNT, 5)
    results = guest(
        host,
        vm,
        0,
        wr(SysReg.CNTV_TVAL_EL0, 0xFFFF_FFF6),
        wr(SysReg.CNTV_CTL_EL0, 1),
        rd(SysReg.CNTV_TVAL_EL0),
        rd(SysReg.CNTV_CTL_EL0),
    )
    assert get_reg(vm, 0, OneReg.TIMER_CVAL) == U64 - 5
    assert [r.value for r in results[2:]] == [0xFFFF_FFF6, 0x1]
    assert line(vm, 0, V) is False


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_guest_writes_only_keep_32_bits_of_ctl_and_tval(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=5000)
    set_reg(vm, 0, OneReg.TIMER_CNT, 5000)
    guest(
        host, vm, 0, wr(SysReg.CNTV_CTL_EL0, 0xFFFF_FFFF_0000_0001), wr(SysReg.CNTV_TVAL_EL0, 0x1_0000_0010)
    )
    assert vm.vcpu(0).timer(V).ctl == 0x1
    assert get_reg(vm, 0, OneReg.TIMER_CVAL) == 5016


# --- NV lines ------------------------------------------------------------------------


def test_nv_host_reports_el2_timer_lines() -> None:
    host, vm = make_vm(HostFeatures(nv=True), h=0)
    set_reg(vm, 0, OneReg.TIMER_CTL, 1)
    assert vm.irq_levels(0) == [
        IrqLevel(TimerId.VTIMER, 27, True),
        IrqLevel(TimerId.PTIMER, 30, False),
        IrqLevel(TimerId.HVTIMER, 28, False),
        IrqLevel(TimerId.HPTIMER, 26, False),
    ]
    assert len(host.run_vcpu(vm.vm_id, 0, []).irq_levels) == 4


def test_irq_levels_can_be_sampled_at_a_given_counter() -> None:
    host, vm = make_vm(h=1000)
    set_reg(vm, 0, OneReg.TIMER_CVAL, 500)
    set_reg(vm, 0, OneReg.TIMER_CTL, 1)
    assert vm.irq_levels(0, 1499)[0].level is False
    assert vm.irq_levels(0, 1500)[0].level is True
    assert host.counter.read() == 1000


# --- the one register dispatch (timer_read / timer_write) -------------------------------------


@pytest.mark.parametrize(
    ("reg", "expected"),
    [
        (TimerReg.CTL, CTL_ENABLE | CTL_ISTATUS),  # condition met at now=150 >= cval=100
        (TimerReg.CVAL, 100),
        (TimerReg.TVAL, (100 - 150) & 0xFFFF_FFFF),
        (TimerReg.CNT, 150),
    ],
)
def test_timer_read_dispatches_every_register(reg: TimerReg, expected: int) -> None:
    ctx = TimerContext(TimerId.VTIMER, ctl=CTL_ENABLE, cval=100)
    assert timer_read(ctx, reg, 150) == expected


def test_timer_write_dispatches_ctl_cval_tval_and_refuses_cnt() -> None:
    ctx = TimerContext(TimerId.PTIMER)
    timer_write(ctx, TimerReg.CTL, CTL_ENABLE | CTL_ISTATUS, 0)
    assert ctx.ctl == CTL_ENABLE  # ISTATUS is never stored
    timer_write(ctx, TimerReg.CVAL, 7, 0)
    assert ctx.cval == 7
    timer_write(ctx, TimerReg.TVAL, 0xFFFF_FFFF, 1000)  # -1 sign-extended
    assert ctx.cval == 999
    with pytest.raises(ValueError):
        timer_write(ctx, TimerReg.CNT, 5, 0)
