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
