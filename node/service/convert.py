"""protobuf <-> core conversions: the only module that imports both."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, cast

from kvmtimer.v1 import node_pb2 as pb

from node.core.errors import BadRequest
from node.core.features import ClockMode
from node.core.host import Host, RunResult, VmOwner
from node.core.timer import TimerId
from node.core.vcpu import AccessKind, GuestOp, SysReg
from node.core.vm import IrqLevel, Vm
from node.core.workload import (
    Sample,
    SampleCause,
    VcpuWorkloadState,
    WorkloadState,
)
from node.service import convert_time
from node.wire import (
    api_profile_from_pb as api_profile_from_pb,
)
from node.wire import (
    api_profile_to_pb as api_profile_to_pb,
)
from node.wire import (
    features_from_info as features_from_info,
)
from node.wire import (
    workload_spec_from_pb as workload_spec_from_pb,
)
from node.wire import (
    workload_spec_to_pb as workload_spec_to_pb,
)


def host_info(host: Host) -> pb.HostInfo:
    f = host.features
    h, rt = host.get_clock()
    info = pb.HostInfo(
        node_id=host.node_id,
        cntfrq_hz=f.cntfrq_hz,
        ecv=int(f.ecv),
        vhe=f.vhe,
        api_profile=api_profile_to_pb(f.api_profile),
        clock_mode=cast(pb.ClockMode, int(host.clock_mode)),
        host_counter=h,
        realtime_ns=rt,
        nv=f.nv,
        has_cntpoff=f.has_cntpoff,
        vm_count=len(host.vms),
        vcpu_count=sum(len(vm.vcpus) for vm in host.vms.values()),
    )
    return convert_time.with_clock_effects(info, host)


def clock_mode_from_pb(value: int) -> ClockMode:
    return ClockMode(value)


def sysreg_from_pb(value: int, n: int) -> SysReg:
    try:
        return SysReg(value)
    except ValueError:
        raise BadRequest(f"op {n}: unknown system register {value}") from None


def guest_ops_from_pb(ops: Sequence[pb.GuestOp]) -> list[GuestOp]:
    out = []
    for n, op in enumerate(ops):
        kind = op.WhichOneof("op")
        if kind == "read":
            out.append(GuestOp(AccessKind.READ, sysreg_from_pb(op.read, n)))
        elif kind == "write":
            out.append(GuestOp(AccessKind.WRITE, sysreg_from_pb(op.write.reg, n), op.write.value))
        elif kind == "wait_ticks":
            out.append(GuestOp(AccessKind.WAIT, value=op.wait_ticks))
        else:
            raise BadRequest(f"op {n}: empty guest op (set read, write or wait_ticks)")
    return out


def irq_lines_to_pb(levels: Sequence[IrqLevel]) -> list[pb.IrqLine]:
    return [
        pb.IrqLine(timer=cast(pb.TimerId, int(lv.timer_id)), intid=lv.intid, level=lv.level) for lv in levels
    ]


def run_result_to_pb(result: RunResult) -> pb.RunVcpuResponse:
    return pb.RunVcpuResponse(
        results=[
            pb.GuestOpResult(value=r.value, trapped=r.trapped, undefined=r.undefined) for r in result.results
        ],
        irq_lines=irq_lines_to_pb(result.irq_levels),
        host_counter=result.host_counter,
        trap_count=result.trap_count,
    )


def vm_summary(vm: Vm, owner: VmOwner) -> pb.VmSummary:
    return pb.VmSummary(
        vm_id=vm.vm_id,
        vcpu_count=len(vm.vcpus),
        running=vm.running,
        voffset=vm.voffset,
        poffset=vm.poffset,
        owner=owner_to_pb(owner),
    )


def owner_to_pb(owner: VmOwner) -> pb.VmOwner:
    return pb.VmOwner(guest_id=owner.guest_id, migration_id=owner.migration_id, generation=owner.generation)


def owner_from_pb(msg: pb.VmOwner) -> VmOwner:
    return VmOwner(guest_id=msg.guest_id, migration_id=msg.migration_id, generation=msg.generation)


def vcpu_state(vm: Vm, index: int) -> pb.VcpuStateInfo:
    vcpu = vm.vcpu(index)
    h = vm.counter.read()
    traps = vm.traps
    levels = {lv.timer_id: lv for lv in vm.irq_levels(index, h)}
    direct = {TimerId.VTIMER: not traps.trap_vtimer, TimerId.PTIMER: not traps.trap_ptimer}
    return pb.VcpuStateInfo(
        host_counter=h,
        voffset=vm.voffset,
        poffset=vm.poffset,
        cntvct=vm.cntvct(h),
        cntpct=vm.cntpct(h),
        cnthctl_el2=traps.cnthctl_el2,
        traps_cntpct=traps.trap_cntpct,
        traps_ptimer=traps.trap_ptimer,
        uses_cntpoff=traps.uses_cntpoff,
        trap_count=vcpu.trap_count,
        has_run=vcpu.has_run,
        timers=[
            pb.TimerInfo(
                timer=cast(pb.TimerId, int(t)),
                ctl=vcpu.timers[t].ctl,
                cval=vcpu.timers[t].cval,
                intid=lv.intid,
                level=lv.level,
                direct=direct.get(t, False),
            )
            for t, lv in levels.items()
        ],
    )


# --- guest workload ----------------------------------------------------------


def sample_to_pb(s: Sample) -> pb.CounterSample:
    return pb.CounterSample(
        cntvct=s.cntvct, cntpct=s.cntpct, realtime_ns=s.realtime_ns, cause=cast(pb.SampleCause, int(s.cause))
    )


def sample_from_pb(s: pb.CounterSample) -> Sample:
    try:
        cause = SampleCause(s.cause)
    except ValueError:
        raise BadRequest(f"unknown sample cause {s.cause}") from None
    return Sample(s.cntvct, s.cntpct, s.realtime_ns, cause)


# The sample rings are the bulk of a migrating guest's state (MAX_SAMPLES readings per
# vCPU) and they are converted inside the migration downtime, so the two loops below
# avoid per-sample temporaries: messages are filled in place with `add()` (no copy into
# the parent), causes come from a dict, and Samples are built through their slots.


def _add_samples(field: Any, samples: Iterable[Sample]) -> None:
    """Append readings to a repeated CounterSample field, filling each message in place."""
    add = field.add
    for s in samples:
        m = add()
        m.cntvct = s.cntvct
        m.cntpct = s.cntpct
        m.realtime_ns = s.realtime_ns
        m.cause = s.cause


_SAMPLE_CAUSES = {int(c): c for c in SampleCause}
_SAMPLE_FIELDS = tuple(f.name for f in dataclasses.fields(Sample))
# Sample is a frozen slots dataclass without __post_init__: setting its four slots through
# their descriptors is what its generated __init__ does, at half the cost.
assert _SAMPLE_FIELDS == ("cntvct", "cntpct", "realtime_ns", "cause") and not hasattr(Sample, "__post_init__")
_SET_CNTVCT, _SET_CNTPCT, _SET_REALTIME, _SET_CAUSE = (getattr(Sample, f).__set__ for f in _SAMPLE_FIELDS)


def _samples_from_pb(samples: Iterable[pb.CounterSample]) -> tuple[Sample, ...]:
    causes, new = _SAMPLE_CAUSES, object.__new__
    out = []
    for s in samples:
        cause = causes.get(s.cause)
        if cause is None:
            raise BadRequest(f"unknown sample cause {s.cause}")
        sample = new(Sample)
        _SET_CNTVCT(sample, s.cntvct)
        _SET_CNTPCT(sample, s.cntpct)
        _SET_REALTIME(sample, s.realtime_ns)
        _SET_CAUSE(sample, cause)
        out.append(sample)
    return tuple(out)


def _set_stats(msg: pb.TimerStatsState, t: tuple[int, int, int, int, int]) -> None:
    msg.SetInParent()  # present even when every counter is still 0
    (
        msg.first_deadline,
        msg.next_deadline,
        msg.received,
        msg.max_lateness_ticks,
        msg.total_lateness_ticks,
    ) = t


def _stats_from_pb(t: pb.TimerStatsState) -> tuple[int, int, int, int, int]:
    return (t.first_deadline, t.next_deadline, t.received, t.max_lateness_ticks, t.total_lateness_ticks)


_OPTIONAL_VCPU_STATE = (
    "last_cntvct",
    "last_cntpct",
    "min_step_v",
    "min_step_p",
    "last_jump_error_ticks",
    "last_stop_ns",
)


def workload_state_to_pb(state: WorkloadState) -> pb.WorkloadState:
    out = pb.WorkloadState(spec=workload_spec_to_pb(state.spec), cntfrq_hz=state.cntfrq_hz)
    for v in state.vcpus:
        msg = out.vcpus.add(vcpu_index=v.index, reads=v.reads)
        _set_stats(msg.vtimer, v.vtimer)
        if v.ptimer is not None:
            _set_stats(msg.ptimer, v.ptimer)
        for name in _OPTIONAL_VCPU_STATE:
            value = getattr(v, name)
            if value is not None:
                setattr(msg, name, value)
        if v.pause_sample is not None:
            msg.pause_sample.CopyFrom(sample_to_pb(v.pause_sample))
        _add_samples(msg.samples, v.samples)
    return out


def _opt(msg: pb.VcpuWorkloadState, name: str) -> int | None:
    return cast(int, getattr(msg, name)) if msg.HasField(name) else None


def workload_state_from_pb(msg: pb.WorkloadState) -> WorkloadState:
    if not msg.HasField("spec"):
        raise BadRequest("workload state without a spec")
    return WorkloadState(
        workload_spec_from_pb(msg.spec),
        msg.cntfrq_hz,
        tuple(
            VcpuWorkloadState(
                index=v.vcpu_index,
                vtimer=_stats_from_pb(v.vtimer),
                ptimer=_stats_from_pb(v.ptimer) if v.HasField("ptimer") else None,
                reads=v.reads,
                last_cntvct=_opt(v, "last_cntvct"),
                last_cntpct=_opt(v, "last_cntpct"),
                min_step_v=_opt(v, "min_step_v"),
                min_step_p=_opt(v, "min_step_p"),
                pause_sample=sample_from_pb(v.pause_sample) if v.HasField("pause_sample") else None,
                last_jump_error_ticks=_opt(v, "last_jump_error_ticks"),
                last_stop_ns=_opt(v, "last_stop_ns"),
                samples=_samples_from_pb(v.samples),
            )
            for v in msg.vcpus
        ),
    )


def observations(vm: Vm, include_samples: bool) -> pb.GuestObservations:
    h = vm.counter.read()
    out = pb.GuestObservations(vm_id=vm.vm_id, running=vm.running, host_counter=h)
    wl = vm.workload
    if wl is None:
        return out
    out.spec.CopyFrom(workload_spec_to_pb(wl.spec))
    period = wl.spec.period_ticks
    cntvct, cntpct = vm.cntvct(h), vm.cntpct(h)
    for index, w in sorted(wl.vcpus.items()):
        o = pb.VcpuObservations(
            vcpu_index=index,
            reads=w.reads,
            vtimer_received=w.vtimer.received,
            vtimer_expected=w.vtimer.expected(cntvct, period),
            max_lateness_ticks=max(
                w.vtimer.max_lateness_ticks, w.ptimer.max_lateness_ticks if w.ptimer else 0
            ),
            total_lateness_ticks=w.vtimer.total_lateness_ticks
            + (w.ptimer.total_lateness_ticks if w.ptimer else 0),
            trap_count=vm.vcpu(index).trap_count,
            cntvct=cntvct,
        )
        if w.ptimer is not None:
            o.ptimer_received = w.ptimer.received
            o.ptimer_expected = w.ptimer.expected(cntpct, period)
        for name in ("min_step_v", "min_step_p", "last_jump_error_ticks", "last_stop_ns"):
            value = getattr(w, name)
            if value is not None:
                setattr(o, name, value)
        if include_samples:
            _add_samples(o.samples, w.samples)
        out.vcpus.append(o)
    return out
