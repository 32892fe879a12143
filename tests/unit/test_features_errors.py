"""Host features, enum numbers and the EmulatorError hierarchy.

Edge cases covered:
- ALL_FEATURE_COMBINATIONS is exactly ECV {0,1,2} x VHE {on,off} x 3 profiles, no duplicates
- predicates: CNTPOFF only with VHE and ECV2; profile-derived capabilities
- CNTFRQ bounds 1..1e9 and ECV values outside 0..2 are refused
- numbers that must match the proto/kernel enums
- every error class carries the kernel errno the spec names (or none)
"""

from __future__ import annotations

import errno
import itertools
from typing import cast

import pytest

from node.core.errors import (
    AlreadyExists,
    BadRequest,
    Busy,
    EmulatorError,
    InvalidArgument,
    NoEntry,
    NoSuchAttr,
    NotPermitted,
    VcpuNotFound,
    VmNotFound,
    WrongClockMode,
)
from node.core.features import (
    ALL_FEATURE_COMBINATIONS,
    DEFAULT_CNTFRQ_HZ,
    MAX_CNTFRQ_HZ,
    ApiProfile,
    ClockMode,
    EcvLevel,
    HostFeatures,
)
from node.core.timer import DEFAULT_PPI, TimerId
from node.core.uapi import PPI_MAX, PPI_MIN, TimerAttr
from node.core.vcpu import SysReg
from tests.unit.conftest import ALL_FEATURES


def test_all_feature_combinations() -> None:
    assert len(ALL_FEATURE_COMBINATIONS) == 18
    keys = {(f.ecv, f.vhe, f.api_profile) for f in ALL_FEATURE_COMBINATIONS}
    assert keys == set(itertools.product(EcvLevel, (False, True), ApiProfile))
    assert all(f.cntfrq_hz == DEFAULT_CNTFRQ_HZ == 25_000_000 for f in ALL_FEATURE_COMBINATIONS)
    assert not any(f.nv for f in ALL_FEATURE_COMBINATIONS)


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_predicates(features: HostFeatures) -> None:
    profile = features.api_profile
    assert features.has_cntpoff is (features.vhe and features.ecv == EcvLevel.CNTPOFF)
    assert features.has_counter_offset_cap is (profile is ApiProfile.VM_COUNTER_OFFSET)
    assert features.has_ptimer_cnt_write is (profile is ApiProfile.VM_COUNTER_OFFSET)
    assert features.has_vcpu_offsets is (profile is ApiProfile.VCPU_OFFSETS)
    assert features.supports_physical_offset is (profile is not ApiProfile.BY_VALUE)


def test_defaults() -> None:
    f = HostFeatures()
    assert (f.cntfrq_hz, f.ecv, f.vhe, f.api_profile, f.nv) == (
        25_000_000,
        EcvLevel.NI,
        True,
        ApiProfile.VM_COUNTER_OFFSET,
        False,
    )


@pytest.mark.parametrize("hz", [0, -1, MAX_CNTFRQ_HZ + 1])
def test_cntfrq_out_of_range(hz: int) -> None:
    with pytest.raises(InvalidArgument):
        HostFeatures(cntfrq_hz=hz)


@pytest.mark.parametrize("hz", [1, MAX_CNTFRQ_HZ])
def test_cntfrq_bounds_accepted(hz: int) -> None:
    assert HostFeatures(cntfrq_hz=hz).cntfrq_hz == hz


@pytest.mark.parametrize("ecv", [3, -1, 15])
def test_ecv_out_of_range(ecv: int) -> None:
    with pytest.raises(InvalidArgument):
        HostFeatures(ecv=cast(EcvLevel, ecv))


def test_enum_numbers() -> None:
    assert [int(p) for p in ApiProfile] == [1, 2, 3]
    assert [int(m) for m in ClockMode] == [1, 2]
    assert [int(e) for e in EcvLevel] == [0, 1, 2]
    assert [int(t) for t in TimerId] == [0, 1, 2, 3]
    assert [int(a) for a in TimerAttr] == [0, 1, 2, 3]
    assert [r.name for r in SysReg] == [
        "CNTFRQ_EL0",
        "CNTVCT_EL0",
        "CNTPCT_EL0",
        "CNTVCTSS_EL0",
        "CNTPCTSS_EL0",
        "CNTV_CTL_EL0",
        "CNTV_CVAL_EL0",
        "CNTV_TVAL_EL0",
        "CNTP_CTL_EL0",
        "CNTP_CVAL_EL0",
        "CNTP_TVAL_EL0",
    ]
    assert [int(r) for r in SysReg] == list(range(1, 12))
    assert DEFAULT_PPI == {TimerId.VTIMER: 27, TimerId.PTIMER: 30, TimerId.HVTIMER: 28, TimerId.HPTIMER: 26}
    assert (PPI_MIN, PPI_MAX) == (16, 31)


@pytest.mark.parametrize(
    ("cls", "name", "number"),
    [
        (NoEntry, "ENOENT", errno.ENOENT),
        (InvalidArgument, "EINVAL", errno.EINVAL),
        (Busy, "EBUSY", errno.EBUSY),
        (NoSuchAttr, "ENXIO", errno.ENXIO),
        (AlreadyExists, "EEXIST", errno.EEXIST),
        (NotPermitted, "EPERM", errno.EPERM),
        (VmNotFound, None, None),
        (VcpuNotFound, None, None),
        (WrongClockMode, None, None),
        (BadRequest, None, None),
    ],
)
def test_errno_of_each_error(cls: type[EmulatorError], name: str | None, number: int | None) -> None:
    err = cls("boom")
    assert isinstance(err, EmulatorError)
    assert (err.errno_name, err.errno) == (name, number)
    assert err.message == "boom"
    assert str(err) == "boom"
