"""Telemetry sampling in the core (node.core.telemetry) and the node's batch encoder.

Edge cases covered:
- every sample of a round shares one (H, realtime) instant; CNTVCT = H - voffset and
  CNTPCT = H - poffset exactly, including u64 wrap (offset above H)
- the trap flags and uses_cntpoff of a sample are the VM's trap policy, for every
  HostFeatures combination, with poffset 0 and non-zero
- timer lines: enabled + condition met is high; masked, disabled or CVAL in the future is low;
  CTL is reported as stored (ISTATUS never stored); the counter moved under a pending timer
- VM and vCPU order (VM creation order, vCPU index order), VM-id filters keep request order and
  drop repeats; an unknown id is VmNotFound unless skip_missing
- rate validation: 0 -> default 10 Hz, (0, 1000] accepted, negative / above 1 kHz / NaN / inf refused
- host totals: traps of destroyed VMs still count; delivered guest interrupts counted exactly
- BatchEncoder output equals field-by-field conversion, across rounds (cached per-vCPU parts),
  for ids longer than 127 bytes (two-byte length prefixes) and u64 extremes; a VM without vCPUs
  adds nothing; max_batch pieces cut rounds across VMs in order
- the stream buffer: a round that does not fit is dropped whole and counted; an empty buffer
  always takes a round; max_batch splits rounds and merges queued pieces up to max_batch
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from kvmtimer.v1 import node_pb2 as pb

from node.core.errors import BadRequest, VmNotFound
from node.core.features import ApiProfile, EcvLevel, HostFeatures
from node.core.host import Host
from node.core.telemetry import (
    DEFAULT_RATE_HZ,
    HostTotals,
    VcpuSample,
    VcpuTimers,
    VmRound,
    check_rate_hz,
    host_totals,
    sample_host,
    select_vms,
)
from node.core.timer import CTL_ENABLE, CTL_IMASK, TimerId
from node.core.traps import compute_traps
from node.core.vcpu import SysReg
from node.core.workload import WorkloadSpec
from node.service.telemetry import (
    BatchEncoder,
    TelemetryStream,
    TelemetryStreams,
    sample_to_pb,
    split_rounds,
)
from tests.unit.conftest import (
    ALL_FEATURES,
    POFFSET_FEATURES,
    advance_to,
    guest,
    make_host,
    rd,
    set_poffset,
    wr,
)

U64 = 1 << 64
H0 = 5_000_000_000


def test_round_shares_one_instant_and_counters_are_exact() -> None:
    host = make_host(h=H0)
    vm_a = host.create_vm("a")
    for i in (2, 0, 1):
        vm_a.create_vcpu(i)
    advance_to(host, H0 + 1000)
    vm_b = host.create_vm("b")
    vm_b.create_vcpu(0)
    advance_to(host, H0 + 1500)
    realtime = host.counter.clock.realtime_ns()

    samples = sample_host(host)

    assert [(s.vm_id, s.vcpu_index) for s in samples] == [("a", 0), ("a", 1), ("a", 2), ("b", 0)]
    assert {(s.host_counter, s.realtime_ns, s.node_id) for s in samples} == {(H0 + 1500, realtime, "node-a")}
    assert [(s.voffset, s.cntvct, s.cntpct) for s in samples] == [
        (H0, 1500, H0 + 1500),
        (H0, 1500, H0 + 1500),
        (H0, 1500, H0 + 1500),
        (H0 + 1000, 500, H0 + 1500),
    ]
    assert all(s.poffset == 0 and not s.running for s in samples)


def test_counters_wrap_mod_2_64() -> None:
    host = make_host(h=100)
    vm = host.create_vm("w")
    vm.create_vcpu(0)
    vm.set_counter_offset(U64 - 50, 0)  # guest counters = H + 50
    (sample,) = sample_host(host)
    assert (sample.cntvct, sample.cntpct, sample.voffset, sample.poffset) == (150, 150, U64 - 50, U64 - 50)


@pytest.mark.parametrize("features", ALL_FEATURES)
def test_trap_flags_follow_the_policy_with_zero_poffset(features: HostFeatures) -> None:
    host = make_host(features, h=H0)
    vm = host.create_vm("v")
    vm.create_vcpu(0)
    traps = compute_traps(features, 0)
    (s,) = sample_host(host)
    assert (s.uses_cntpoff, s.traps_cntpct, s.traps_ptimer) == (
        traps.uses_cntpoff,
        traps.trap_cntpct,
        traps.trap_ptimer,
    )


@pytest.mark.parametrize("features", POFFSET_FEATURES)
def test_trap_flags_and_trap_count_with_a_physical_offset(features: HostFeatures) -> None:
    host = make_host(features, h=H0)
    vm = host.create_vm("v")
    vm.create_vcpu(0)
    vm.create_vcpu(1)
    set_poffset(vm, 1234)
    guest(host, vm, 1, rd(SysReg.CNTPCT_EL0), rd(SysReg.CNTPCT_EL0), rd(SysReg.CNTVCT_EL0))
    traps = compute_traps(features, 1234)
    s0, s1 = sample_host(host)
    assert s1.poffset == 1234 and s1.cntpct == H0 - 1234
    assert (s1.uses_cntpoff, s1.traps_cntpct, s1.traps_ptimer) == (
        traps.uses_cntpoff,
        traps.trap_cntpct,
        traps.trap_ptimer,
    )
    # Two CNTPCT reads trap exactly when the policy traps CNTPCT; CNTVCT never does.
    assert (s0.trap_count, s1.trap_count) == (0, 2 if traps.trap_cntpct else 0)


def test_timer_lines_and_stored_ctl() -> None:
    host = make_host(HostFeatures(ecv=EcvLevel.CNTPOFF, vhe=True), h=H0)
    vm = host.create_vm("t")
    for i in range(4):
        vm.create_vcpu(i)
    advance_to(host, H0 + 1000)  # guest counters: CNTVCT = 1000, CNTPCT = H0 + 1000
    guest(host, vm, 0, wr(SysReg.CNTV_CVAL_EL0, 999), wr(SysReg.CNTV_CTL_EL0, CTL_ENABLE))  # due
    guest(host, vm, 1, wr(SysReg.CNTV_CVAL_EL0, 999), wr(SysReg.CNTV_CTL_EL0, CTL_ENABLE | CTL_IMASK))
    guest(host, vm, 2, wr(SysReg.CNTV_CVAL_EL0, 1001), wr(SysReg.CNTV_CTL_EL0, CTL_ENABLE))  # pending
    guest(host, vm, 3, wr(SysReg.CNTP_CVAL_EL0, H0 + 1000), wr(SysReg.CNTP_CTL_EL0, CTL_ENABLE))
    rows = sample_host(host)
    assert [(r.vtimer_ctl, r.vtimer_cval, r.vtimer_level) for r in rows] == [
        (CTL_ENABLE, 999, True),
        (CTL_ENABLE | CTL_IMASK, 999, False),
        (CTL_ENABLE, 1001, False),
        (0, 0, False),
    ]
    assert [(r.ptimer_ctl, r.ptimer_cval, r.ptimer_level) for r in rows] == [
        (0, 0, False),
        (0, 0, False),
        (0, 0, False),
        (CTL_ENABLE, H0 + 1000, True),
    ]
    # The counter moves under the pending timer: its line rises.
    advance_to(host, H0 + 1001)
    assert sample_host(host)[2].vtimer_level is True
    assert vm.vcpu(2).timers[TimerId.VTIMER].ctl == CTL_ENABLE


def test_running_flag() -> None:
    host = make_host(h=H0)
    vm = host.create_vm("r")
    vm.create_vcpu(0)
    vm.resume()
    assert sample_host(host)[0].running is True
    vm.pause()
    assert sample_host(host)[0].running is False


def test_vm_filters() -> None:
    host = make_host(h=H0)
    for name in ("a", "b", "c"):
        host.create_vm(name).create_vcpu(0)
    assert [s.vm_id for s in sample_host(host, ["c", "a", "c"])] == ["c", "a"]
    assert [vm.vm_id for vm in select_vms(host, ["a", "gone"], skip_missing=True)] == ["a"]
    with pytest.raises(VmNotFound):
        sample_host(host, ["a", "gone"])
    assert sample_host(Host("empty", HostFeatures(), host.counter.clock)) == []


@pytest.mark.parametrize(
    ("rate", "expected"), [(0.0, DEFAULT_RATE_HZ), (0.5, 0.5), (10.0, 10.0), (1000.0, 1000.0)]
)
def test_rate_accepted(rate: float, expected: float) -> None:
    assert check_rate_hz(rate) == expected


@pytest.mark.parametrize("rate", [-1.0, 1000.5, 1e9, math.nan, math.inf, -math.inf])
def test_rate_refused(rate: float) -> None:
    with pytest.raises(BadRequest):
        check_rate_hz(rate)


def test_host_totals_keep_destroyed_vms_traps_and_count_interrupts() -> None:
    features = HostFeatures(ecv=EcvLevel.NI, vhe=False, api_profile=ApiProfile.VM_COUNTER_OFFSET)
    host = make_host(features, h=H0)
    vm = host.create_vm("x")
    vm.create_vcpu(0)
    vm.create_vcpu(1)
    # nVHE: the physical timer is emulated, every CNTP_* access traps.
    guest(host, vm, 0, rd(SysReg.CNTP_CTL_EL0), rd(SysReg.CNTP_CVAL_EL0), rd(SysReg.CNTP_CTL_EL0))
    other = host.create_vm("y")
    other.create_vcpu(0)
    other.start_workload(WorkloadSpec(period_ticks=1000))
    other.resume()
    assert host_totals(host) == HostTotals(vms=2, vcpus=3, traps=3, guest_interrupts=0)
    host.step_clock(10_500)  # ten periods of y's virtual timer
    host.destroy_vm("x")
    totals = host_totals(host)
    assert (totals.vms, totals.vcpus, totals.traps, totals.guest_interrupts) == (1, 1, 3, 10)


# --- encoder -----------------------------------------------------------------


def _round(vm_id: str, h: int, *vcpus: VcpuTimers, **changes: Any) -> VmRound:
    base = VmRound(
        node_id="node-1",
        vm_id=vm_id,
        realtime_ns=1_700_000_000_000_000_000 + h,
        host_counter=h,
        cntvct=h - 7,
        cntpct=h,
        voffset=7,
        poffset=0,
        uses_cntpoff=True,
        traps_cntpct=False,
        traps_ptimer=False,
        running=True,
        vcpus=vcpus,
    )
    return base._replace(**changes)


def _vcpu(index: int, cval: int, **changes: Any) -> VcpuTimers:
    return VcpuTimers(index, index, 1, cval, False, 0, 0, False)._replace(**changes)


def test_encoder_matches_field_by_field_conversion_across_rounds() -> None:
    encoder = BatchEncoder()
    long_id = "v" * 300  # sample longer than 127 bytes: two-byte length prefix
    batches = [
        [_round("a", 1000, _vcpu(0, 1100), _vcpu(1, 1100)), _round(long_id, 1000, _vcpu(0, 5))],
        # Same per-vCPU values for a/0 (cached part reused), new ones for a/1.
        [_round("a", 2000, _vcpu(0, 1100), _vcpu(1, 1100, trap_count=9, vtimer_level=True))],
        [
            _round(
                "z",
                U64 - 1,
                _vcpu(511, U64 - 1, ptimer_cval=U64 - 1, ptimer_ctl=0xFFFF_FFFF, ptimer_level=True),
                cntvct=U64 - 1,
                voffset=U64 - 1,
                poffset=U64 - 1,
                realtime_ns=-1,
                uses_cntpoff=False,
                traps_cntpct=True,
                traps_ptimer=True,
                running=False,
            )
        ],
    ]
    for rounds in batches:
        expected = pb.TelemetryBatch(samples=[sample_to_pb(s) for r in rounds for s in r.samples()])
        assert encoder.encode(rounds) == expected
    assert encoder.encode([]) == pb.TelemetryBatch()
    assert encoder.encode([_round("empty", 100)]) == pb.TelemetryBatch()


def test_round_samples_carry_every_field() -> None:
    r = _round("a", 1000, _vcpu(3, 1100, vtimer_level=True))
    (s,) = r.samples()
    assert s == VcpuSample(
        "node-1", "a", 3, 1_700_000_000_000_001_000, 1000, 993, 1000, 7, 0,
        True, False, False, 3, 1, 1100, True, 0, 0, False, True,
    )  # fmt: skip


def _indexes(rounds: list[VmRound]) -> list[tuple[str, int]]:
    return [(r.vm_id, t.vcpu_index) for r in rounds for t in r.vcpus]


def test_split_rounds_cuts_across_vms() -> None:
    rounds = [
        _round("a", 1, _vcpu(0, 1), _vcpu(1, 1), _vcpu(2, 1)),
        _round("b", 1, _vcpu(0, 1), _vcpu(1, 1), _vcpu(2, 1)),
    ]
    assert [_indexes(c) for c in split_rounds(rounds, 4)] == [
        [("a", 0), ("a", 1), ("a", 2), ("b", 0)],
        [("b", 1), ("b", 2)],
    ]
    assert [_indexes(c) for c in split_rounds(rounds, 3)] == [
        [("a", 0), ("a", 1), ("a", 2)],
        [("b", 0), ("b", 1), ("b", 2)],
    ]
    assert [len(_indexes(c)) for c in split_rounds(rounds, 0)] == [6]
    assert [len(_indexes(c)) for c in split_rounds(rounds, 1)] == [1] * 6


# --- stream buffer -------------------------------------------------------------


def _stream(host: Host, *, max_batch: int, capacity: int) -> tuple[TelemetryStreams, TelemetryStream]:
    streams = TelemetryStreams(buffer_samples=capacity)
    return streams, streams.open(host, 1000.0, [], max_batch)


def test_buffer_drops_whole_rounds_that_do_not_fit() -> None:
    host = make_host(h=H0)
    vm = host.create_vm("a")
    for i in range(6):
        vm.create_vcpu(i)
    streams, stream = _stream(host, max_batch=0, capacity=10)
    stream.sample_round()  # 6 buffered
    stream.sample_round()  # 6 + 6 > 10: dropped
    assert (stream.dropped, streams.dropped_total) == (6, 6)
    assert len(_indexes(stream.take())) == 6
    stream.sample_round()  # empty buffer: a round always fits
    stream.sample_round()
    stream.sample_round()
    assert (stream.dropped, streams.dropped_total, stream.rounds) == (18, 18, 5)


def test_empty_buffer_takes_a_round_larger_than_capacity() -> None:
    host = make_host(h=H0)
    vm = host.create_vm("a")
    for i in range(6):
        vm.create_vcpu(i)
    _, stream = _stream(host, max_batch=0, capacity=4)
    stream.sample_round()
    stream.sample_round()
    assert stream.dropped == 6
    assert [i for _, i in _indexes(stream.take())] == [0, 1, 2, 3, 4, 5]


def test_max_batch_splits_rounds_and_merges_queued_pieces() -> None:
    host = make_host(h=H0)
    vm = host.create_vm("a")
    for i in range(3):
        vm.create_vcpu(i)
    _, stream = _stream(host, max_batch=2, capacity=100)
    stream.sample_round()
    assert _indexes(stream.take()) == [("a", 0), ("a", 1)]
    assert _indexes(stream.take()) == [("a", 2)]
    _, stream = _stream(host, max_batch=7, capacity=100)
    for _ in range(3):
        stream.sample_round()  # three pieces of 3: 3 + 3 fit in 7, the third does not
    assert len(_indexes(stream.take())) == 6
    assert len(_indexes(stream.take())) == 3
