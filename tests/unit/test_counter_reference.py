"""SetRegs with a counter reference: counter values meant for an earlier host counter sample.

Edge cases covered:
- the written offset is exactly `reference - value` however many ticks passed since the sample;
- only TIMER_CNT / PTIMER_CNT are advanced, CVAL/CTL are written as given;
- a reference in the future (wrap-around arithmetic) and the ignored writes after the offset ioctl.
"""

from __future__ import annotations

from node.core.clock import U64_MASK, ManualClock
from node.core.features import HostFeatures
from node.core.host import Host
from node.core.uapi import OneReg


def make(h: int) -> Host:
    return Host("n", HostFeatures(), ManualClock(), counter_base=h)


def test_counter_values_are_advanced_by_the_ticks_since_the_reference() -> None:
    host = make(1_000)
    vm = host.create_vm("g")
    vm.create_vcpu(0)
    host.step_clock(250)  # H = 1250; the sample was taken at H = 900
    vm.set_regs(
        [(0, OneReg.TIMER_CNT, 500), (0, OneReg.PTIMER_CNT, 800), (0, OneReg.TIMER_CVAL, 777)],
        counter_reference=900,
    )
    assert (vm.voffset, vm.poffset) == (400, 100)
    assert vm.get_one_reg(0, OneReg.TIMER_CVAL) == 777
    assert vm.get_one_reg(0, OneReg.TIMER_CNT) == 850


def test_reference_ahead_of_the_host_counter_wraps() -> None:
    host = make(10)
    vm = host.create_vm("g")
    vm.create_vcpu(0)
    vm.set_regs([(0, OneReg.TIMER_CNT, 5)], counter_reference=20)
    assert vm.voffset == 15
    assert vm.get_one_reg(0, OneReg.TIMER_CNT) == (10 - 15) & U64_MASK


def test_ignored_after_the_vm_wide_offset_was_set() -> None:
    host = make(10_000)
    vm = host.create_vm("g")
    vm.create_vcpu(0)
    vm.set_counter_offset(7_000, 0)
    vm.set_regs([(0, OneReg.TIMER_CNT, 0)], counter_reference=9_000)
    assert (vm.voffset, vm.poffset) == (7_000, 7_000)
