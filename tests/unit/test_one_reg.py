"""ONE_REG access, register list, batches and bad inputs: spec §2.1, conformance cases 29-31.

Edge cases covered:
- the uapi ids, including the frozen TIMER_CVAL / TIMER_CNT encoding swap
- an id that is no register, or a timer id with a U32 size field: ENOENT on get and set (29, 30)
- TIMER_OFFSET (series CNTVOFF): ENOENT on upstream models and until cap 206 is enabled;
  then it reads voffset - poffset, writes keep poffset, and appears in the reg list (31)
- an id whose upper half is not KVM_REG_ARM64's: EINVAL (checked before ENOENT)
- KVM_GET_REG_LIST per kernel: see test_reg_exposure.py (§2.1 table, cases 41-42)
- batched set_regs is all-or-nothing: a bad entry anywhere (unknown vCPU, unknown id,
  value outside u64, a PTIMER id before 6.4: ENOENT) changes nothing and names the entry
- batched get_regs validates every entry first and reads one counter sample
- unknown vCPU, value outside u64: the right EmulatorError subclass, state unchanged
"""

from __future__ import annotations

import pytest

from node.core.errors import BadRequest, EmulatorError, InvalidArgument, NoEntry, VcpuNotFound
from node.core.features import ApiProfile, HostFeatures
from node.core.timer import TimerId
from node.core.uapi import Cap, OneReg, arm64_sys_reg
from tests.unit.conftest import (
    ALL_FEATURES,
    advance_to,
    fingerprint,
    make_vm,
)

U64 = 1 << 64
SERIES = HostFeatures(api_profile=ApiProfile.VCPU_OFFSETS)
SERIES_REGS = [OneReg.TIMER_CTL, OneReg.TIMER_CNT, OneReg.TIMER_CVAL]


@pytest.mark.parametrize(
    ("reg", "encoding", "reg_id"),
    [
        (OneReg.TIMER_CTL, (3, 3, 14, 3, 1), 0x6030_0000_0013_DF19),
        (OneReg.TIMER_CVAL, (3, 3, 14, 0, 2), 0x6030_0000_0013_DF02),  # CNTVCT_EL0's encoding
        (OneReg.TIMER_CNT, (3, 3, 14, 3, 2), 0x6030_0000_0013_DF1A),  # CNTV_CVAL_EL0's encoding
        (OneReg.PTIMER_CTL, (3, 3, 14, 2, 1), 0x6030_0000_0013_DF11),
        (OneReg.PTIMER_CVAL, (3, 3, 14, 2, 2), 0x6030_0000_0013_DF12),
        (OneReg.PTIMER_CNT, (3, 3, 14, 0, 1), 0x6030_0000_0013_DF01),
        (OneReg.TIMER_OFFSET, (3, 4, 14, 0, 3), 0x6030_0000_0013_E703),
    ],
)
def test_one_reg_ids(reg: OneReg, encoding: tuple[int, int, int, int, int], reg_id: int) -> None:
    assert reg == reg_id
    assert arm64_sys_reg(*encoding) == reg_id


@pytest.mark.parametrize("features", ALL_FEATURES)
@pytest.mark.parametrize(
    "reg_id",
    [
        0x6030_0000_0013_DF1F,  # case 29: 3,3,14,3,7 is not a register
        0x6020_0000_0013_DF1A,  # case 30: TIMER_CNT with a U32 size
        0x6020_0000_0013_DF19,  # TIMER_CTL with a U32 size
        0x6040_0000_0013_DF02,  # TIMER_CVAL with a U128 size
        0x6030_0000_0013_E703,  # TIMER_OFFSET before KVM_ENABLE_CAP(206)
        0x6030_0000_0013_DF20,  # next to a timer id
    ],
)
def test_cases29_30_unknown_or_wrongly_sized_ids_are_enoent(features: HostFeatures, reg_id: int) -> None:
    assert arm64_sys_reg(3, 3, 14, 3, 7) == 0x6030_0000_0013_DF1F
    _, vm = make_vm(features, h=1000)
    before = fingerprint(vm)
    with pytest.raises(NoEntry) as exc_info:
        vm.get_one_reg(0, reg_id)
    assert exc_info.value.errno_name == "ENOENT"
    with pytest.raises(NoEntry):
        vm.set_one_reg(0, reg_id, 400)
    assert fingerprint(vm) == before
    assert vm.get_one_reg(0, OneReg.TIMER_CNT) == 0


@pytest.mark.parametrize("profile", [ApiProfile.BY_VALUE, ApiProfile.VM_COUNTER_OFFSET])
def test_case31_timer_offset_is_enoent_on_upstream_models(profile: ApiProfile) -> None:
    _, vm = make_vm(HostFeatures(api_profile=profile), h=1000)
    with pytest.raises(InvalidArgument):
        vm.enable_cap(Cap.ARM_VTIMER_OFFSET)
    with pytest.raises(NoEntry):
        vm.get_one_reg(0, OneReg.TIMER_OFFSET)
    assert vm.vtimer_offset_enabled is False
    assert OneReg.TIMER_OFFSET not in vm.reg_list(0)


def test_case31_series_timer_offset_after_enable_cap() -> None:
    host, vm = make_vm(SERIES, h=10_000)
    with pytest.raises(NoEntry):
        vm.get_one_reg(0, OneReg.TIMER_OFFSET)
    assert vm.reg_list(0) == SERIES_REGS
    vm.enable_cap(Cap.ARM_VTIMER_OFFSET)
    assert vm.reg_list(0) == [*SERIES_REGS, OneReg.TIMER_OFFSET]
    assert vm.get_one_reg(0, OneReg.TIMER_OFFSET) == 10_000  # voffset - poffset
    vm.set_one_reg(0, OneReg.TIMER_OFFSET, 1000)
    assert (vm.voffset, vm.poffset) == (1000, 0)
    assert vm.get_one_reg(0, OneReg.TIMER_CNT) == 9000
    # guest_cntpct = H - P, guest_cntvct = H - TIMER_OFFSET - P
    vm.set_attr(0, 1, 2, 3000)
    assert (vm.voffset, vm.poffset) == (4000, 3000)
    assert vm.get_one_reg(0, OneReg.TIMER_OFFSET) == 1000
    assert vm.cntpct(host.counter.read()) == 7000  # PTIMER_CNT itself is ENOENT (case 41)
    assert vm.get_one_reg(0, OneReg.TIMER_CNT) == 6000
    # A by-value TIMER_CNT write changes the guest CNTVOFF, not P.
    vm.set_one_reg(0, OneReg.TIMER_CNT, 500)
    assert vm.get_one_reg(0, OneReg.TIMER_OFFSET) == 6500
    assert vm.poffset == 3000
    advance_to(host, 10_100)
    assert vm.get_one_reg(0, OneReg.TIMER_CNT) == 600


def test_series_timer_offset_wraps() -> None:
    _, vm = make_vm(SERIES, h=100)
    vm.enable_cap(Cap.ARM_VTIMER_OFFSET)
    vm.set_attr(0, 1, 2, 50)
    vm.set_one_reg(0, OneReg.TIMER_OFFSET, U64 - 10)
    assert (vm.voffset, vm.poffset) == (40, 50)
    assert vm.get_one_reg(0, OneReg.TIMER_OFFSET) == U64 - 10
    assert vm.get_one_reg(0, OneReg.TIMER_CNT) == 60


@pytest.mark.parametrize("features", ALL_FEATURES)
@pytest.mark.parametrize(
    "reg_id",
    [0, 0x6030_0001_0013_DF1A, 0x4030_0000_0013_DF1A, 0x6130_0000_0013_DF19, 0x7030_0000_0013_DF19],
)
def test_foreign_upper_half_is_einval_not_enoent(features: HostFeatures, reg_id: int) -> None:
    _, vm = make_vm(features, h=1000)
    before = fingerprint(vm)
    with pytest.raises(InvalidArgument) as exc_info:
        vm.get_one_reg(0, reg_id)
    assert exc_info.value.errno_name == "EINVAL"
    with pytest.raises(InvalidArgument):
        vm.set_one_reg(0, reg_id, 1)
    with pytest.raises(InvalidArgument):
        vm.get_regs([(0, OneReg.TIMER_CNT), (0, reg_id)])
    with pytest.raises(InvalidArgument):
        vm.set_regs([(0, OneReg.TIMER_CNT, 5), (0, reg_id, 1)])
    assert fingerprint(vm) == before


# --- batches ---------------------------------------------------------------------

BAD_MIDDLE_ENTRIES = [
    pytest.param((7, OneReg.TIMER_CVAL, 1), VcpuNotFound, id="unknown-vcpu"),
    pytest.param((0, 0x6030_0000_0013_DF1F, 1), NoEntry, id="unknown-id"),
    pytest.param((0, 0x6020_0000_0013_DF1A, 1), NoEntry, id="u32-size"),
    pytest.param((0, 0x6030_0001_0013_DF1A, 1), InvalidArgument, id="foreign-upper-half"),
    pytest.param((0, OneReg.TIMER_CVAL, U64), BadRequest, id="value-too-big"),
    pytest.param((0, OneReg.TIMER_CVAL, -1), BadRequest, id="negative-value"),
]


@pytest.mark.parametrize("features", ALL_FEATURES)
@pytest.mark.parametrize(("bad", "error"), BAD_MIDDLE_ENTRIES)
def test_set_regs_with_a_bad_middle_entry_changes_nothing(
    features: HostFeatures, bad: tuple[int, int, int], error: type[EmulatorError]
) -> None:
    _, vm = make_vm(features, h=1000, vcpus=2)
    before = fingerprint(vm)
    entries = [
        (0, OneReg.TIMER_CNT, 5),
        (1, OneReg.TIMER_CTL, 1),
        (0, OneReg.TIMER_CVAL, 77),
        bad,
        (1, OneReg.TIMER_CVAL, 88),
    ]
    with pytest.raises(error) as exc_info:
        vm.set_regs(entries)
    assert exc_info.value.message.startswith("entry 3: ")
    assert fingerprint(vm) == before
    assert vm.get_one_reg(0, OneReg.TIMER_CNT) == 0


@pytest.mark.parametrize("profile", [ApiProfile.BY_VALUE, ApiProfile.VCPU_OFFSETS])
@pytest.mark.parametrize("ptimer_reg", [OneReg.PTIMER_CNT, OneReg.PTIMER_CTL, OneReg.PTIMER_CVAL])
def test_set_regs_with_a_ptimer_entry_before_6_4_is_enoent_and_changes_nothing(
    profile: ApiProfile, ptimer_reg: OneReg
) -> None:
    _, vm = make_vm(HostFeatures(api_profile=profile), h=1000)
    before = fingerprint(vm)
    with pytest.raises(NoEntry) as exc_info:
        vm.set_regs([(0, OneReg.TIMER_CNT, 5), (0, ptimer_reg, 5)])
    assert exc_info.value.message.startswith("entry 1: ")
    assert exc_info.value.errno_name == "ENOENT"
    assert fingerprint(vm) == before


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_set_regs_applies_in_request_order(features: HostFeatures) -> None:
    host, vm = make_vm(features, h=1000, vcpus=2)
    vm.set_regs(
        [
            (0, OneReg.TIMER_CVAL, 1),
            (1, OneReg.TIMER_CNT, 400),
            (0, OneReg.TIMER_CVAL, 2),
            (0, OneReg.TIMER_CNT, 300),  # last writer wins
            (1, OneReg.TIMER_CTL, 0x7),
        ]
    )
    assert vm.get_one_reg(0, OneReg.TIMER_CVAL) == 2
    assert vm.voffset == 700
    assert vm.get_one_reg(1, OneReg.TIMER_CNT) == 300
    assert vm.vcpu(1).timer(TimerId.VTIMER).ctl == 0x3
    vm.set_regs([])
    assert host.counter.read() == 1000


def test_get_regs_reads_every_value_at_one_sample() -> None:
    host, vm = make_vm(h=1000, vcpus=2)
    vm.set_one_reg(1, OneReg.TIMER_CVAL, 55)
    values, h, realtime_ns = vm.get_regs(
        [(0, OneReg.TIMER_CNT), (1, OneReg.TIMER_CVAL), (1, OneReg.PTIMER_CNT)]
    )  # default profile: 6.4+
    assert values == [0, 55, 1000]
    assert (h, realtime_ns) == host.get_clock()
    assert vm.get_regs([]) == ([], 1000, realtime_ns)
    before = fingerprint(vm)
    with pytest.raises(VcpuNotFound):
        vm.get_regs([(0, OneReg.TIMER_CNT), (2, OneReg.TIMER_CNT)])
    with pytest.raises(NoEntry):
        vm.get_regs([(0, OneReg.TIMER_CNT), (0, 0x6020_0000_0013_DF1A)])
    assert fingerprint(vm) == before


# --- single-register bad inputs -------------------------------------------------


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_single_register_bad_inputs(features: HostFeatures) -> None:
    _, vm = make_vm(features, h=1000)
    before = fingerprint(vm)
    with pytest.raises(VcpuNotFound):
        vm.get_one_reg(1, OneReg.TIMER_CNT)
    with pytest.raises(VcpuNotFound):
        vm.set_one_reg(512, OneReg.TIMER_CNT, 0)
    with pytest.raises(BadRequest):
        vm.set_one_reg(0, OneReg.TIMER_CNT, U64)
    with pytest.raises(BadRequest):
        vm.set_one_reg(0, OneReg.TIMER_CVAL, -1)
    assert fingerprint(vm) == before
    # The largest u64 is fine.
    vm.set_one_reg(0, OneReg.TIMER_CVAL, U64 - 1)
    assert vm.get_one_reg(0, OneReg.TIMER_CVAL) == U64 - 1
