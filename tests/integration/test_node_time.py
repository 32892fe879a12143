"""Node RPCs for time: ApplyCounterRecord (destination side of spec §4.2) and SetClockEffects.

Edge cases covered:
- case 36 over gRPC on both offset profiles, and inside a Batch; the response is the
  destination's own instant and what it credited; a non-ECV destination traps CNTPCT
- case 39 over gRPC: a destination realtime behind the source's read credits 0 (clamped)
- ApplyCounterRecord refusals with exact status codes and errnos, nothing changed:
  no record, unknown method, a method the kernel lacks, another CNTFRQ, running VM, no VM
- SetClockEffects: skew, drift and steps move GetClock's realtime (and HostInfo's
  realtime_* fields, and PauseVm/StepClock instants) but never the host counter; an empty
  request changes nothing; out-of-range values are INVALID_ARGUMENT and change nothing
- realtime nodes under CPU load (busy processes): a guest migrated with an offset method
  between two realtime nodes has error exactly 0 with no skew (25 MHz and 1 GHz), exactly
  the destination's skew otherwise; never backwards
"""

from __future__ import annotations

import math

import grpc
import pytest
from kvmtimer.v1 import node_pb2 as pb

from node.core.clock import NS_PER_S, ManualClock
from node.core.features import ApiProfile, EcvLevel, HostFeatures
from tests.integration.node_helpers import (
    create_vcpu,
    create_vm,
    expect_error,
    observable_state,
    realtime_node,
    vcpu_state,
)
from tests.support.load import busy_cpus
from tests.support.nodes import in_process_node
from tests.support.timesync import migrate_by_hand, start_guest

T_NS = 1_700_000_000 * NS_PER_S
CASE36 = pb.CounterRecord(
    cntvct=4_000_000_000,
    cntpct=4_000_000_000,
    host_counter=5_000_000_000,
    realtime_ns=T_NS,
    cntfrq_hz=25_000_000,
)
METHOD_FOR = {
    ApiProfile.VM_COUNTER_OFFSET: pb.COUNTER_RESTORE_METHOD_VM_COUNTER_OFFSET,
    ApiProfile.VCPU_OFFSETS: pb.COUNTER_RESTORE_METHOD_VCPU_OFFSETS,
}


def apply(
    vm_id: str, method: pb.CounterRestoreMethod, record: pb.CounterRecord | None = CASE36
) -> pb.ApplyCounterRecordRequest:
    return pb.ApplyCounterRecordRequest(vm_id=vm_id, record=record, method=method)


@pytest.mark.asyncio
@pytest.mark.parametrize("profile", [ApiProfile.VM_COUNTER_OFFSET, ApiProfile.VCPU_OFFSETS])
async def test_case36_apply_counter_record(profile: ApiProfile) -> None:
    features = HostFeatures(ecv=EcvLevel.NI, vhe=False, api_profile=profile)
    clock = ManualClock(realtime_offset_ns=T_NS + 2_500_000_000)
    async with in_process_node(features, clock=clock, counter_base=90_000_000_000) as n:
        await create_vm(n.stub, "g")
        await create_vcpu(n.stub, "g", 0)
        resp: pb.ApplyCounterRecordResponse = await n.stub.ApplyCounterRecord(apply("g", METHOD_FOR[profile]))
        assert resp == pb.ApplyCounterRecordResponse(
            host_counter=90_000_000_000,
            realtime_ns=T_NS + 2_500_000_000,
            elapsed_ns=2_500_000_000,
            elapsed_ticks=62_500_000,
            cntvct=4_062_500_000,
            cntpct=4_062_500_000,
            voffset=85_937_500_000,
            poffset=85_937_500_000,
            applied_as=resp.applied_as,
        )
        state = await vcpu_state(n.stub, "g", 0)
        assert (state.cntvct, state.cntpct, state.traps_cntpct) == (4_062_500_000, 4_062_500_000, True)
        # Case 37 through a Batch, 0.5 s later: the same offsets.
        await n.stub.StepClock(pb.StepClockRequest(delta_ticks=12_500_000))
        out: pb.BatchResponse = await n.stub.Batch(
            pb.BatchRequest(
                calls=[
                    pb.BatchCall(apply_counter_record=apply("g", METHOD_FOR[profile])),
                    pb.BatchCall(resume_vm=pb.ResumeVmRequest(vm_id="g")),
                ]
            )
        )
        again = out.results[0].apply_counter_record
        assert (again.host_counter, again.elapsed_ticks, again.voffset) == (
            90_012_500_000,
            75_000_000,
            85_937_500_000,
        )


@pytest.mark.asyncio
async def test_case39_destination_behind_is_clamped() -> None:
    clock = ManualClock(realtime_offset_ns=T_NS - 200_000_000)
    async with in_process_node(clock=clock, counter_base=90_000_000_000) as n:
        await create_vm(n.stub, "g")
        await create_vcpu(n.stub, "g", 0)
        resp = await n.stub.ApplyCounterRecord(apply("g", pb.COUNTER_RESTORE_METHOD_VM_COUNTER_OFFSET))
        assert (resp.elapsed_ns, resp.elapsed_ticks, resp.cntvct) == (-200_000_000, 0, 4_000_000_000)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("features", "request_", "code", "errno"),
    [
        (
            HostFeatures(),
            pb.ApplyCounterRecordRequest(vm_id="g", method=pb.COUNTER_RESTORE_METHOD_BY_VALUE),
            grpc.StatusCode.INVALID_ARGUMENT,
            None,
        ),
        (
            HostFeatures(),
            apply("g", pb.COUNTER_RESTORE_METHOD_UNSPECIFIED),
            grpc.StatusCode.INVALID_ARGUMENT,
            "EINVAL",
        ),
        (
            HostFeatures(api_profile=ApiProfile.BY_VALUE),
            apply("g", pb.COUNTER_RESTORE_METHOD_VM_COUNTER_OFFSET),
            grpc.StatusCode.INVALID_ARGUMENT,
            "EINVAL",
        ),
        (
            HostFeatures(),
            apply("g", pb.COUNTER_RESTORE_METHOD_VCPU_OFFSETS),
            grpc.StatusCode.INVALID_ARGUMENT,
            "EINVAL",
        ),
        (
            HostFeatures(cntfrq_hz=1_000_000_000),
            apply("g", pb.COUNTER_RESTORE_METHOD_BY_VALUE),
            grpc.StatusCode.INVALID_ARGUMENT,
            "EINVAL",
        ),
        (HostFeatures(), apply("nope", pb.COUNTER_RESTORE_METHOD_BY_VALUE), grpc.StatusCode.NOT_FOUND, None),
    ],
)
async def test_apply_counter_record_refusals_change_nothing(
    features: HostFeatures, request_: pb.ApplyCounterRecordRequest, code: grpc.StatusCode, errno: str | None
) -> None:
    async with in_process_node(features) as n:
        await create_vm(n.stub, "g")
        await create_vcpu(n.stub, "g", 0)
        before = await observable_state(n.stub, "g", [0])
        await expect_error(n.stub.ApplyCounterRecord(request_), code, errno)
        assert await observable_state(n.stub, "g", [0]) == before


@pytest.mark.asyncio
async def test_apply_counter_record_on_a_running_vm_is_busy() -> None:
    async with in_process_node() as n:
        await create_vm(n.stub, "g")
        await create_vcpu(n.stub, "g", 0)
        await n.stub.ResumeVm(pb.ResumeVmRequest(vm_id="g"))
        before = await observable_state(n.stub, "g", [0])
        await expect_error(
            n.stub.ApplyCounterRecord(apply("g", pb.COUNTER_RESTORE_METHOD_VM_COUNTER_OFFSET)),
            grpc.StatusCode.FAILED_PRECONDITION,
            "EBUSY",
        )
        assert await observable_state(n.stub, "g", [0]) == before


@pytest.mark.asyncio
async def test_clock_effects_move_realtime_never_the_counter() -> None:
    async with in_process_node(counter_base=1_000) as n:
        stub = n.stub
        state: pb.ClockEffectsState = await stub.SetClockEffects(
            pb.SetClockEffectsRequest(skew_ns=-250_000_000)
        )
        assert (state.skew_ns, state.offset_ns, state.host_counter, state.realtime_ns) == (
            -250_000_000,
            -250_000_000,
            1_000,
            T_NS - 250_000_000,
        )
        clock: pb.GetClockResponse = await stub.GetClock(pb.GetClockRequest())
        assert (clock.host_counter, clock.realtime_ns) == (1_000, T_NS - 250_000_000)
        await stub.SetClockEffects(pb.SetClockEffectsRequest(drift_ppm=20.0, step_ns=NS_PER_S))
        stepped: pb.StepClockResponse = await stub.StepClock(pb.StepClockRequest(delta_ticks=25_000_000))
        # One second later: + 1 s, + the 1 s step, + 20 µs of drift, - the skew.
        assert (stepped.host_counter, stepped.realtime_ns) == (25_001_000, T_NS + 1_750_020_000)
        info: pb.HostInfo = await stub.GetHostInfo(pb.GetHostInfoRequest())
        assert (info.realtime_skew_ns, info.realtime_drift_ppm, info.realtime_offset_ns) == (
            -250_000_000,
            20.0,
            750_020_000,
        )
        unchanged: pb.ClockEffectsState = await stub.SetClockEffects(pb.SetClockEffectsRequest())
        assert (unchanged.skew_ns, unchanged.drift_ppm, unchanged.drift_ns, unchanged.stepped_ns) == (
            -250_000_000,
            20.0,
            20_000,
            NS_PER_S,
        )
        await create_vm(stub, "g")
        await create_vcpu(stub, "g", 0)
        paused: pb.PauseVmResponse = await stub.PauseVm(pb.PauseVmRequest(vm_id="g"))
        assert (paused.host_counter, paused.realtime_ns) == (25_001_000, T_NS + 1_750_020_000)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "request_",
    [
        pb.SetClockEffectsRequest(skew_ns=(1 << 63) - 1),
        pb.SetClockEffectsRequest(step_ns=-(1 << 62)),
        pb.SetClockEffectsRequest(drift_ppm=math.nan),
        pb.SetClockEffectsRequest(skew_ns=5, drift_ppm=1e9),
    ],
)
async def test_bad_clock_effects_are_refused_and_change_nothing(request_: pb.SetClockEffectsRequest) -> None:
    async with in_process_node() as n:
        before = await n.stub.SetClockEffects(pb.SetClockEffectsRequest(skew_ns=7, drift_ppm=1.5))
        await expect_error(n.stub.SetClockEffects(request_), grpc.StatusCode.INVALID_ARGUMENT, "EINVAL")
        assert await n.stub.SetClockEffects(pb.SetClockEffectsRequest()) == before


# --- realtime nodes ------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("cntfrq_hz", [25_000_000, 1_000_000_000])
@pytest.mark.parametrize("profile", [ApiProfile.VM_COUNTER_OFFSET, ApiProfile.VCPU_OFFSETS])
async def test_realtime_offset_migrations_under_load_are_exact(cntfrq_hz: int, profile: ApiProfile) -> None:
    features = HostFeatures(cntfrq_hz=cntfrq_hz, api_profile=profile)
    period = cntfrq_hz // 1000  # 1 ms timer period
    skew_ns = 3_000_000  # 3 ms: a whole number of ticks at both frequencies
    with busy_cpus():
        async with (
            realtime_node(features, counter_base=10**12) as a,
            realtime_node(features, counter_base=7 * 10**12) as b,
        ):
            await start_guest(a.stub, "g", 2, period)
            moves = []
            for n, (src, dst, skew) in enumerate([(a, b, 0), (b, a, 0), (a, b, skew_ns), (b, a, 0)]):
                await dst.stub.SetClockEffects(pb.SetClockEffectsRequest(skew_ns=skew))
                await src.stub.SetClockEffects(pb.SetClockEffectsRequest(skew_ns=0))
                moved = await migrate_by_hand(
                    src.stub, dst.stub, f"g{n}" if n else "g", f"g{n + 1}", 2, METHOD_FOR[profile]
                )
                moves.append((moved, skew))
            for moved, skew in moves:
                expected = skew * cntfrq_hz // NS_PER_S
                assert moved.error_ticks == expected, (moved.credit, moved.record)
                assert moved.credit.elapsed_ticks > 0
                assert all(v.min_step_v >= 0 for v in moved.observations.vcpus)
