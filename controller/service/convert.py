"""protobuf <-> controller model conversions."""

from __future__ import annotations

from typing import cast

from kvmtimer.v1 import controller_pb2 as cpb
from kvmtimer.v1 import node_pb2 as pb

from controller.core.errors import InvalidArgument
from controller.core.migration import Method, MigrationRecord
from controller.core.model import GuestRecord, GuestState, NodeRecord
from node.core.errors import EmulatorError
from node.core.workload import WorkloadSpec
from node.wire import workload_spec_from_pb, workload_spec_to_pb


def node_status(node: NodeRecord, guests: int, vcpus: int) -> cpb.NodeStatus:
    f = node.features
    return cpb.NodeStatus(
        node_id=node.node_id,
        address=node.address,
        healthy=node.healthy,
        cntfrq_hz=f.cntfrq_hz,
        ecv=int(f.ecv),
        vhe=f.vhe,
        api_profile=cast(pb.ApiProfile, int(f.api_profile)),
        clock_mode=cast(pb.ClockMode, int(node.clock_mode)),
        has_cntpoff=f.has_cntpoff,
        guest_count=guests,
        vcpu_count=vcpus,
        last_error=node.last_error,
    )


def guest_to_pb(guest: GuestRecord, observations: pb.GuestObservations | None = None) -> cpb.Guest:
    msg = cpb.Guest(
        guest_id=guest.guest_id,
        node_id=guest.node_id,
        vm_id=guest.vm_id,
        vcpus=guest.vcpus,
        workload=workload_spec_to_pb(guest.workload),
        migrating=guest.migrating or "",
        migrations=guest.migrations,
        state=_GUEST_STATES.get(guest.state, cpb.GUEST_STATE_UNSPECIFIED),
        state_reason=guest.reason,
        generation=guest.generation,
    )
    if observations is not None:
        msg.observations.CopyFrom(observations)
    return msg


_GUEST_STATES = {
    GuestState.RUNNING: cpb.GUEST_STATE_RUNNING,
    GuestState.LOST: cpb.GUEST_STATE_LOST,
    GuestState.CREATING: cpb.GUEST_STATE_CREATING,
}


def workload_from_request(spec: pb.WorkloadSpec) -> WorkloadSpec | None:
    """None (period 0) = the default workload chosen at placement."""
    if spec.period_ticks == 0 and not spec.use_ptimer:
        return None
    try:
        return WorkloadSpec(period_ticks=spec.period_ticks, use_ptimer=spec.use_ptimer)
    except EmulatorError as err:
        raise InvalidArgument(err.message) from None


def method_from_pb(value: int) -> Method:
    try:
        return Method(value)
    except ValueError:
        raise InvalidArgument(f"unknown migration method {value}") from None


def migration_to_pb(r: MigrationRecord) -> cpb.Migration:
    msg = cpb.Migration(
        migration_id=r.migration_id,
        guest_id=r.guest_id,
        source=r.source,
        destination=r.destination or "",
        requested_method=cast(cpb.MigrationMethod, int(r.requested_method)),
        method=cast(cpb.MigrationMethod, int(r.method or 0)),
        phase=cast(cpb.MigrationPhase, int(r.phase)),
        reason=r.reason,
        setup_time=r.setup_time_us(),
        downtime=r.downtime_us(),
        total_time=r.total_time_us(),
        traps_before=r.traps_before,
        traps_after=r.traps_after,
        source_traps_cntpct=r.source_traps_cntpct,
        destination_traps_cntpct=r.destination_traps_cntpct,
        destination_uses_cntpoff=r.destination_uses_cntpoff,
        applied_as=r.applied_as,
        cancelled=r.cancelled,
        created_realtime_ns=r.created_realtime_ns,
        finished_realtime_ns=r.finished_realtime_ns,
        source_voffset=r.source_voffset,
        source_poffset=r.source_poffset,
        destination_voffset=r.destination_voffset,
        destination_poffset=r.destination_poffset,
        elapsed_ticks=r.elapsed_ticks,
        realtime_skew_ns=r.realtime_skew_ns,
        not_carried=r.not_carried,
        guest_uses_ptimer=r.guest_uses_ptimer,
        allow_state_loss=r.allow_state_loss,
        journal_step=r.journal_step,
        recovered=r.recovered,
    )
    if r.counter_error_ticks is not None:
        msg.counter_error_ticks = r.counter_error_ticks
    return msg


__all__ = ["guest_to_pb", "migration_to_pb", "node_status", "workload_from_request", "workload_spec_from_pb"]
