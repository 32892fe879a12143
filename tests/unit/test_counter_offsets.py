"""Counter / offset model: spec §1, §2.1 and conformance cases 1-6.

Edge cases covered:
- every vCPU creation rewrites the VM-wide voffset to H and zeroes poffset (case 1)
- a by-value TIMER_CNT write moves voffset for every vCPU; last writer wins (case 2)
- guest counters tick 1:1 with H, also while the VM is paused (case 3)
- a fresh VM's guest CNTPCT equals H (case 4): PTIMER_CNT reads it on 6.4+, ENOENT before (case 41)
- a PTIMER_CNT write moves only poffset on 6.4+ (case 5); ENOENT and nothing changed before 6.4 (case 41)
- wrap-around: an offset above H (case 6), the host counter itself wrapping past 2^64
- by-value restore is not idempotent: the same value written later gives another offset (§4.1)
- guest MRS CNTVCT/CNTPCT agree with the ONE_REG views in every host mode
"""

from __future__ import annotations

import pytest

from node.core.errors import NoEntry
from node.core.features import HostFeatures
from node.core.uapi import OneReg
from node.core.vcpu import SysReg
from tests.unit.conftest import (
    ALL_FEATURES,
    COUNTER_OFFSET_FEATURES,
    NO_COUNTER_OFFSET_FEATURES,
    POFFSET_FEATURES,
    advance_to,
    fingerprint,
    get_reg,
    guest_values,
    make_host,
    make_vm,
    rd,
    set_poffset,
)

U64 = 1 << 64


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_case01_each_vcpu_creation_resets_the_vm_wide_voffset(features: HostFeatures) -> None:
    host = make_host(features, h=1000)
    vm = host.create_vm("vm0")
    vm.create_vcpu(0)
    assert vm.voffset == 1000
    advance_to(host, 1200)
    vm.create_vcpu(1)
    advance_to(host, 1500)
    assert (vm.voffset, vm.poffset) == (1200, 0)
    assert vm.get_one_reg(0, OneReg.TIMER_CNT) == 300
    assert vm.get_one_reg(1, OneReg.TIMER_CNT) == 300
    assert get_reg(vm, 0, OneReg.PTIMER_CNT) == 1500


@pytest.mark.parametrize("features", POFFSET_FEATURES)
def test_vcpu_creation_also_resets_poffset(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=1000)
    set_poffset(vm, 0x100)
    assert get_reg(vm, 0, OneReg.PTIMER_CNT) == 1000 - 0x100
    advance_to(host, 2000)
    vm.create_vcpu(1)
    assert (vm.voffset, vm.poffset) == (2000, 0)
    assert get_reg(vm, 0, OneReg.PTIMER_CNT) == 2000
    assert vm.get_one_reg(1, OneReg.TIMER_CNT) == 0
    assert vm.traps.trap_cntpct is False


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_case02_timer_cnt_write_is_broadcast_to_every_vcpu(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=1000, vcpus=2)
    vm.set_one_reg(0, OneReg.TIMER_CNT, 400)
    assert vm.voffset == 600
    advance_to(host, 1500)
    assert vm.get_one_reg(1, OneReg.TIMER_CNT) == 900
    assert vm.get_one_reg(0, OneReg.TIMER_CNT) == 900
    assert vm.poffset == 0


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_timer_cnt_per_vcpu_restore_is_last_writer_wins(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=1000, vcpus=2)
    vm.set_one_reg(0, OneReg.TIMER_CNT, 400)
    advance_to(host, 1100)
    vm.set_one_reg(1, OneReg.TIMER_CNT, 50)
    assert vm.voffset == 1050
    assert vm.get_one_reg(0, OneReg.TIMER_CNT) == 50
    assert vm.get_one_reg(1, OneReg.TIMER_CNT) == 50


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_case03_counter_runs_one_to_one_with_h_even_while_paused(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=1000)
    vm.set_one_reg(0, OneReg.TIMER_CNT, 400)
    assert vm.voffset == 600
    advance_to(host, 2000)
    assert vm.get_one_reg(0, OneReg.TIMER_CNT) == 1400
    vm.resume()
    vm.pause()
    assert vm.running is False
    advance_to(host, 2600)
    assert vm.get_one_reg(0, OneReg.TIMER_CNT) == 2000
    assert guest_values(host, vm, 0, rd(SysReg.CNTVCT_EL0)) == [2000]


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_case04_fresh_vm_physical_counter_equals_h(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=0)
    advance_to(host, 5000)
    assert vm.poffset == 0
    if features.has_ptimer_regs:
        assert vm.get_one_reg(0, OneReg.PTIMER_CNT) == 5000
    else:
        with pytest.raises(NoEntry):
            vm.get_one_reg(0, OneReg.PTIMER_CNT)
    assert guest_values(host, vm, 0, rd(SysReg.CNTPCT_EL0)) == [5000]


@pytest.mark.parametrize("features", COUNTER_OFFSET_FEATURES)
def test_case05_ptimer_cnt_write_moves_only_poffset(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=1000, vcpus=2)
    vm.set_one_reg(0, OneReg.TIMER_CNT, 400)
    advance_to(host, 5000)
    vm.set_one_reg(0, OneReg.PTIMER_CNT, 100)
    assert (vm.voffset, vm.poffset) == (600, 4900)
    for index in (0, 1):
        assert vm.get_one_reg(index, OneReg.TIMER_CNT) == 4400
        assert vm.get_one_reg(index, OneReg.PTIMER_CNT) == 100


@pytest.mark.parametrize("features", NO_COUNTER_OFFSET_FEATURES)
def test_case05_ptimer_cnt_write_is_enoent_before_6_4(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=1000)
    advance_to(host, 5000)
    before = fingerprint(vm)
    with pytest.raises(NoEntry) as exc_info:
        vm.set_one_reg(0, OneReg.PTIMER_CNT, 100)
    assert exc_info.value.errno_name == "ENOENT"
    assert fingerprint(vm) == before
    assert guest_values(host, vm, 0, rd(SysReg.CNTPCT_EL0)) == [5000]


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_case06_offset_wraps_modulo_2_64(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=100)
    vm.set_one_reg(0, OneReg.TIMER_CNT, 500)
    assert vm.voffset == 0xFFFF_FFFF_FFFF_FE70
    advance_to(host, 200)
    assert vm.get_one_reg(0, OneReg.TIMER_CNT) == 600
    assert guest_values(host, vm, 0, rd(SysReg.CNTVCT_EL0)) == [600]


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_host_counter_wrapping_past_2_64_keeps_guest_counters_continuous(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=U64 - 10)
    assert vm.voffset == U64 - 10
    assert host.step_clock(25) == 15
    assert vm.get_one_reg(0, OneReg.TIMER_CNT) == 25
    assert get_reg(vm, 0, OneReg.PTIMER_CNT) == 15
    assert guest_values(host, vm, 0, rd(SysReg.CNTVCT_EL0), rd(SysReg.CNTPCT_EL0)) == [25, 15]


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_by_value_restore_depends_on_when_it_happens(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=1000)
    vm.set_one_reg(0, OneReg.TIMER_CNT, 400)
    first = vm.voffset
    advance_to(host, 1500)
    vm.set_one_reg(0, OneReg.TIMER_CNT, 400)
    # Same value, 500 ticks later: the guest lost exactly those 500 ticks.
    assert (first, vm.voffset) == (600, 1100)


@pytest.mark.parametrize(
    ("h", "cnt", "voffset"),
    [
        (1000, 0, 1000),
        (1000, 1000, 0),
        (0, 1, U64 - 1),
        (U64 - 1, 0, U64 - 1),
        (5, U64 - 1, 6),
    ],
)
def test_timer_cnt_write_sets_voffset_to_h_minus_value(h: int, cnt: int, voffset: int) -> None:
    host, vm = make_vm(h=h)
    vm.set_one_reg(0, OneReg.TIMER_CNT, cnt)
    assert vm.voffset == voffset
    assert vm.get_one_reg(0, OneReg.TIMER_CNT) == cnt
    assert host.step_clock(3) == (h + 3) % U64
    assert vm.get_one_reg(0, OneReg.TIMER_CNT) == (cnt + 3) % U64


@pytest.mark.parametrize("features", POFFSET_FEATURES)
def test_guest_reads_match_one_reg_views_with_both_offsets(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=10_000)
    set_poffset(vm, 3000)
    vm.set_one_reg(0, OneReg.TIMER_CNT, 1234)
    advance_to(host, 10_100)
    assert (vm.voffset, vm.poffset) == (10_000 - 1234, 3000)
    assert vm.get_one_reg(0, OneReg.TIMER_CNT) == 1334
    assert get_reg(vm, 0, OneReg.PTIMER_CNT) == 7100
    assert guest_values(host, vm, 0, rd(SysReg.CNTVCT_EL0), rd(SysReg.CNTPCT_EL0)) == [1334, 7100]
