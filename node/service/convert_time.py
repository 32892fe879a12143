"""protobuf <-> core for the time RPCs: counter records applied on a destination, clock effects."""

from __future__ import annotations

from kvmtimer.v1 import node_pb2 as pb

from node.core.clock import RealtimeState
from node.core.errors import BadRequest
from node.core.host import Host
from node.core.timesync import CounterRecord, Credit


def counter_record_from_pb(request: pb.ApplyCounterRecordRequest) -> CounterRecord:
    if not request.HasField("record"):
        raise BadRequest("record is required (the source's counters and the instant they were read at)")
    r = request.record
    return CounterRecord(
        cntvct=r.cntvct,
        cntpct=r.cntpct,
        host_counter=r.host_counter,
        realtime_ns=r.realtime_ns,
        cntfrq_hz=r.cntfrq_hz,
    )


def credit_to_pb(credit: Credit) -> pb.ApplyCounterRecordResponse:
    return pb.ApplyCounterRecordResponse(
        host_counter=credit.host_counter,
        realtime_ns=credit.realtime_ns,
        elapsed_ns=credit.elapsed_ns,
        elapsed_ticks=credit.elapsed_ticks,
        cntvct=credit.cntvct,
        cntpct=credit.cntpct,
        voffset=credit.voffset,
        poffset=credit.poffset,
        applied_as=credit.applied_as,
    )


def clock_effects_to_pb(state: RealtimeState, host_counter: int, realtime_ns: int) -> pb.ClockEffectsState:
    return pb.ClockEffectsState(
        skew_ns=state.skew_ns,
        drift_ppm=state.drift_ppm,
        drift_ns=state.drift_ns,
        stepped_ns=state.stepped_ns,
        offset_ns=state.offset_ns,
        host_counter=host_counter,
        realtime_ns=realtime_ns,
    )


def set_clock_effects(host: Host, request: pb.SetClockEffectsRequest) -> pb.ClockEffectsState:
    """SetClockEffects on the core: absent fields stay as they are; errors change nothing."""
    state = host.change_clock_effects(
        skew_ns=request.skew_ns if request.HasField("skew_ns") else None,
        drift_ppm=request.drift_ppm if request.HasField("drift_ppm") else None,
        step_ns=request.step_ns,
    )
    h, realtime_ns = host.get_clock()
    return clock_effects_to_pb(state, h, realtime_ns)


def with_clock_effects(info: pb.HostInfo, host: Host) -> pb.HostInfo:
    """HostInfo's realtime_* fields filled in."""
    state = host.counter.realtime_state()
    info.realtime_skew_ns = state.skew_ns
    info.realtime_drift_ppm = state.drift_ppm
    info.realtime_offset_ns = state.offset_ns
    return info
