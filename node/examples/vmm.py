"""A tiny VMM: save and restore a VM's timer registers the way QEMU does, against kvmtimer nodes.

QEMU builds its register list from KVM_GET_REG_LIST and saves/restores every id in it
(target/arm/kvm.c); on stop it reads TIMER_CNT and on continue writes it back
(`kvm_arm_vm_state_change`, unless kvm-no-adjvtime), so guest time stalls while stopped.
On a pre-6.4 kernel the physical timer's ids are not in the list (ENOENT), so its state
is simply not migrated. This example does exactly that over the node's gRPC API:

    python -m node.examples.vmm save    --node HOST:PORT --vm VM          > vm.json
    python -m node.examples.vmm restore --node HOST:PORT --vm VM --state vm.json
    python -m node.examples.vmm migrate --node HOST:PORT --vm VM --to HOST:PORT
    python -m node.examples.vmm stop-continue --node HOST:PORT --vm VM

The vCPUs of a VM are assumed to be 0..vcpu_count-1. Register ids and the attribute
group come from node.core.uapi (the kernel's uapi numbers).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from kvmtimer.v1 import node_pb2 as pb
from kvmtimer.v1 import node_pb2_grpc

from node.core.uapi import OneReg, reg_name

# QEMU writes the guest counters back only on a full state put, after the other registers.
COUNTER_IDS = (int(OneReg.TIMER_CNT), int(OneReg.PTIMER_CNT))


@dataclass(frozen=True, slots=True)
class SavedVm:
    """Every register the source kernel listed, per vCPU, in list order: the migration payload."""

    vcpus: dict[int, list[tuple[int, int]]]  # vCPU index -> [(reg id, value)]

    def to_json(self) -> str:
        return json.dumps(
            {str(i): [[f"{r:#018x}", v] for r, v in regs] for i, regs in self.vcpus.items()}, indent=1
        )

    @classmethod
    def from_json(cls, text: str) -> SavedVm:
        raw = json.loads(text)
        return cls({int(i): [(int(r, 16), int(v)) for r, v in regs] for i, regs in raw.items()})


def vcpu_count(stub: node_pb2_grpc.NodeStub, vm_id: str) -> int:
    vms: pb.ListVmsResponse = stub.ListVms(pb.ListVmsRequest())
    for vm in vms.vms:
        if vm.vm_id == vm_id:
            return vm.vcpu_count
    raise SystemExit(f"vmm: no vm {vm_id!r} on this node")


def reg_list(stub: node_pb2_grpc.NodeStub, vm_id: str, index: int) -> list[int]:
    resp: pb.GetRegListResponse = stub.GetRegList(pb.GetRegListRequest(vm_id=vm_id, vcpu_index=index))
    return list(resp.reg_ids)


def save(stub: node_pb2_grpc.NodeStub, vm_id: str) -> SavedVm:
    """KVM_GET_REG_LIST, then KVM_GET_ONE_REG of every listed id on every vCPU (VM paused)."""
    saved = {}
    for index in range(vcpu_count(stub, vm_id)):
        ids = reg_list(stub, vm_id, index)
        values = [
            stub.GetOneReg(pb.GetOneRegRequest(vm_id=vm_id, vcpu_index=index, reg_id=r)).value for r in ids
        ]
        saved[index] = list(zip(ids, values, strict=True))
    return SavedVm(saved)


def restore(stub: node_pb2_grpc.NodeStub, vm_id: str, state: SavedVm) -> list[str]:
    """Write every saved register this kernel lists (counters last); returns the ids it lacks.

    A register the destination kernel does not list cannot be written there (ENOENT):
    like QEMU, the VMM leaves it out, and that state is lost.
    """
    skipped: list[str] = []
    for index, regs in sorted(state.vcpus.items()):
        listed = set(reg_list(stub, vm_id, index))
        ordered = sorted(regs, key=lambda rv: rv[0] in COUNTER_IDS)  # stable: counters last
        for reg_id, value in ordered:
            if reg_id not in listed:
                skipped.append(f"vcpu{index}:{reg_name(reg_id)}")
                continue
            stub.SetOneReg(pb.SetOneRegRequest(vm_id=vm_id, vcpu_index=index, reg_id=reg_id, value=value))
    return skipped


def stop(stub: node_pb2_grpc.NodeStub, vm_id: str) -> int:
    """Stop the VM and read the guest virtual counter (kvm_arm_get_virtual_time)."""
    stub.PauseVm(pb.PauseVmRequest(vm_id=vm_id))
    resp: pb.GetOneRegResponse = stub.GetOneReg(pb.GetOneRegRequest(vm_id=vm_id, reg_id=OneReg.TIMER_CNT))
    return resp.value


def cont(stub: node_pb2_grpc.NodeStub, vm_id: str, cnt: int) -> None:
    """Write the counter saved at stop back, then continue (kvm_arm_put_virtual_time)."""
    stub.SetOneReg(pb.SetOneRegRequest(vm_id=vm_id, reg_id=OneReg.TIMER_CNT, value=cnt))
    stub.ResumeVm(pb.ResumeVmRequest(vm_id=vm_id))


def migrate(src: node_pb2_grpc.NodeStub, dst: node_pb2_grpc.NodeStub, vm_id: str) -> list[str]:
    """Stop on the source, save every listed register, create the VM on the destination,
    restore what it lists, continue there, destroy the source VM. Returns what was lost."""
    src.PauseVm(pb.PauseVmRequest(vm_id=vm_id))
    state = save(src, vm_id)
    dst.CreateVm(pb.CreateVmRequest(vm_id=vm_id))
    for index in state.vcpus:
        dst.CreateVcpu(pb.CreateVcpuRequest(vm_id=vm_id, vcpu_index=index))
    lost = restore(dst, vm_id, state)
    dst.ResumeVm(pb.ResumeVmRequest(vm_id=vm_id))
    src.DestroyVm(pb.DestroyVmRequest(vm_id=vm_id))
    return lost


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m node.examples.vmm", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["save", "restore", "migrate", "stop-continue"])
    parser.add_argument("--node", required=True, metavar="HOST:PORT", help="the node holding the VM")
    parser.add_argument("--vm", required=True, metavar="VM")
    parser.add_argument("--to", metavar="HOST:PORT", help="migrate: the destination node")
    parser.add_argument("--state", metavar="FILE", help="restore: a file written by `save`")
    args = parser.parse_args(argv)
    with grpc.insecure_channel(args.node) as channel:
        stub = node_pb2_grpc.NodeStub(channel)
        if args.command == "save":
            print(save(stub, args.vm).to_json())
        elif args.command == "restore":
            if not args.state:
                parser.error("restore needs --state FILE")
            with open(args.state) as f:
                lost = restore(stub, args.vm, SavedVm.from_json(f.read()))
            print(json.dumps({"not_restored": lost}))
        elif args.command == "stop-continue":
            cnt = stop(stub, args.vm)
            cont(stub, args.vm, cnt)
            print(json.dumps({"timer_cnt": cnt}))
        else:
            if not args.to:
                parser.error("migrate needs --to HOST:PORT")
            with grpc.insecure_channel(args.to) as dst_channel:
                lost = migrate(stub, node_pb2_grpc.NodeStub(dst_channel), args.vm)
            print(json.dumps({"not_carried": lost}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
