"""A migration done by hand with node RPCs only (no controller): the VMM's view of spec §4.2.

The source is paused and its counters read in one Batch (with the instant they were read
at); the destination VM is built, given the guest memory and timer registers, and the
record applied at the destination's own instant, then resumed, in one Batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmtimer.v1 import node_pb2 as pb
from kvmtimer.v1 import node_pb2_grpc

TIMER_CNT = 0x603000000013DF1A
TIMER_STATE = (0x603000000013DF02, 0x603000000013DF19, 0x603000000013DF12, 0x603000000013DF11)


@dataclass(frozen=True)
class HandMigration:
    credit: pb.ApplyCounterRecordResponse  # what the destination credited, and its instant
    record: pb.CounterRecord  # what the source read
    observations: pb.GuestObservations  # the guest on the destination, just after resume

    @property
    def error_ticks(self) -> int:
        """The guest's own measurement: counter jump over the stop minus real time (vCPU 0)."""
        return self.observations.vcpus[0].last_jump_error_ticks


async def migrate_by_hand(
    src: node_pb2_grpc.NodeStub,
    dst: node_pb2_grpc.NodeStub,
    vm_id: str,
    dst_vm_id: str,
    vcpus: int,
    method: pb.CounterRestoreMethod,
) -> HandMigration:
    listed: pb.GetRegListResponse = await src.GetRegList(pb.GetRegListRequest(vm_id=vm_id, vcpu_index=0))
    state_ids = [r for r in TIMER_STATE if r in listed.reg_ids]
    reads = [pb.RegValue(vcpu_index=0, reg_id=TIMER_CNT)]
    reads += [pb.RegValue(vcpu_index=i, reg_id=r) for i in range(vcpus) for r in state_ids]
    out: pb.BatchResponse = await src.Batch(
        pb.BatchRequest(
            calls=[
                pb.BatchCall(pause_vm=pb.PauseVmRequest(vm_id=vm_id)),
                pb.BatchCall(get_regs=pb.GetRegsRequest(vm_id=vm_id, regs=reads)),
                pb.BatchCall(save_workload=pb.SaveWorkloadRequest(vm_id=vm_id)),
                pb.BatchCall(get_vcpu_state=pb.GetVcpuStateRequest(vm_id=vm_id, vcpu_index=0)),
            ]
        )
    )
    regs = out.results[1].get_regs
    info: pb.HostInfo = await src.GetHostInfo(pb.GetHostInfoRequest())
    # CNTPCT at the same instant: PTIMER_CNT does not exist before 6.4, the offset always does
    # (and does not move while the VM is paused).
    poffset = out.results[3].get_vcpu_state.poffset
    record = pb.CounterRecord(
        cntvct=regs.regs[0].value,
        cntpct=(regs.host_counter - poffset) % (1 << 64),
        host_counter=regs.host_counter,
        realtime_ns=regs.realtime_ns,
        cntfrq_hz=info.cntfrq_hz,
    )
    calls = [pb.BatchCall(create_vm=pb.CreateVmRequest(vm_id=dst_vm_id))]
    calls += [
        pb.BatchCall(create_vcpu=pb.CreateVcpuRequest(vm_id=dst_vm_id, vcpu_index=i)) for i in range(vcpus)
    ]
    calls += [
        pb.BatchCall(set_regs=pb.SetRegsRequest(vm_id=dst_vm_id, regs=list(regs.regs[1:]))),
        pb.BatchCall(
            load_workload=pb.LoadWorkloadRequest(vm_id=dst_vm_id, state=out.results[2].save_workload)
        ),
        pb.BatchCall(
            apply_counter_record=pb.ApplyCounterRecordRequest(vm_id=dst_vm_id, record=record, method=method)
        ),
        pb.BatchCall(resume_vm=pb.ResumeVmRequest(vm_id=dst_vm_id)),
        pb.BatchCall(get_guest_observations=pb.GetGuestObservationsRequest(vm_id=dst_vm_id)),
    ]
    done: pb.BatchResponse = await dst.Batch(pb.BatchRequest(calls=calls))
    await src.DestroyVm(pb.DestroyVmRequest(vm_id=vm_id))
    return HandMigration(
        done.results[-3].apply_counter_record, record, done.results[-1].get_guest_observations
    )


async def start_guest(stub: node_pb2_grpc.NodeStub, vm_id: str, vcpus: int, period_ticks: int) -> None:
    calls = [pb.BatchCall(create_vm=pb.CreateVmRequest(vm_id=vm_id))]
    calls += [pb.BatchCall(create_vcpu=pb.CreateVcpuRequest(vm_id=vm_id, vcpu_index=i)) for i in range(vcpus)]
    calls += [
        pb.BatchCall(
            start_workload=pb.StartWorkloadRequest(
                vm_id=vm_id, spec=pb.WorkloadSpec(period_ticks=period_ticks)
            )
        ),
        pb.BatchCall(resume_vm=pb.ResumeVmRequest(vm_id=vm_id)),
    ]
    await stub.Batch(pb.BatchRequest(calls=calls))
