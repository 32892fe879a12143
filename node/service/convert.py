"""protobuf <-> core conversions: the only module that imports both."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from kvmtimer.v1 import node_pb2 as pb

from node.core.errors import BadRequest
from node.core.features import ApiProfile, ClockMode, EcvLevel, HostFeatures
from node.core.host import Host, RunResult
from node.core.timer import TimerId
from node.core.vcpu import AccessKind, GuestOp, SysReg
from node.core.vm import IrqLevel, Vm
from node.core.workload import (
    Sample,
    SampleCause,
    VcpuWorkloadState,
    WorkloadSpec,
    WorkloadState,
)


def api_profile_to_pb(profile: ApiProfile) -> pb.ApiProfile:
    return cast(pb.ApiProfile, int(profile))


def api_profile_from_pb(value: int) -> ApiProfile:
    try:
        return ApiProfile(value)
    except ValueError:
        raise BadRequest(f"unknown api profile {value}") from None


def host_info(host: Host) -> pb.HostInfo:
    f = host.features
    h, rt = host.get_clock()
    return pb.HostInfo(
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


def features_from_info(info: pb.HostInfo) -> HostFeatures:
    return HostFeatures(
        cntfrq_hz=info.cntfrq_hz,
        ecv=EcvLevel(info.ecv),
        vhe=info.vhe,
        api_profile=api_profile_from_pb(info.api_profile),
        nv=info.nv,
    )


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


def vm_summary(vm: Vm) -> pb.VmSummary:
    return pb.VmSummary(
        vm_id=vm.vm_id,
        vcpu_count=len(vm.vcpus),
        running=vm.running,
        voffset=vm.voffset,
        poffset=vm.poffset,
    )


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


def workload_spec_from_pb(spec: pb.WorkloadSpec) -> WorkloadSpec:
    return WorkloadSpec(period_ticks=spec.period_ticks, use_ptimer=spec.use_ptimer)


def workload_spec_to_pb(spec: WorkloadSpec) -> pb.WorkloadSpec:
    return pb.WorkloadSpec(period_ticks=spec.period_ticks, use_ptimer=spec.use_ptimer)


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


def _stats_to_pb(t: tuple[int, int, int, int, int]) -> pb.TimerStatsState:
    return pb.TimerStatsState(
        first_deadline=t[0],
        next_deadline=t[1],
        received=t[2],
        max_lateness_ticks=t[3],
        total_lateness_ticks=t[4],
    )


def _stats_from_pb(t: pb.TimerStatsState) -> tuple[int, int, int, int, int]:
    return (t.first_deadline, t.next_deadline, t.received, t.max_lateness_ticks, t.total_lateness_ticks)


def workload_state_to_pb(state: WorkloadState) -> pb.WorkloadState:
    vcpus = []
    for v in state.vcpus:
        msg = pb.VcpuWorkloadState(
            vcpu_index=v.index,
            vtimer=_stats_to_pb(v.vtimer),
            reads=v.reads,
            samples=[sample_to_pb(s) for s in v.samples],
        )
        if v.ptimer is not None:
            msg.ptimer.CopyFrom(_stats_to_pb(v.ptimer))
        for name in (
            "last_cntvct",
            "last_cntpct",
            "min_step_v",
            "min_step_p",
            "last_jump_error_ticks",
            "last_stop_ns",
        ):
            value = getattr(v, name)
            if value is not None:
                setattr(msg, name, value)
        if v.pause_sample is not None:
            msg.pause_sample.CopyFrom(sample_to_pb(v.pause_sample))
        vcpus.append(msg)
    return pb.WorkloadState(spec=workload_spec_to_pb(state.spec), cntfrq_hz=state.cntfrq_hz, vcpus=vcpus)


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
                samples=tuple(sample_from_pb(s) for s in v.samples),
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
            o.samples.extend(sample_to_pb(s) for s in w.samples)
        out.vcpus.append(o)
    return out
