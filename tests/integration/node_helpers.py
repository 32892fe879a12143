"""Shared helpers for the node gRPC integration tests (tests/integration/test_node_*.py).

Register ids, capability numbers and attribute ids are spelled out here as the
spec's literal uapi numbers rather than imported from node.core, so that a wrong
constant in the core fails a test instead of being reused by it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Iterable
from typing import cast

import grpc
from kvmtimer.v1 import node_pb2 as pb
from kvmtimer.v1 import node_pb2_grpc

from node.core.clock import SystemClock
from node.core.features import ClockMode, HostFeatures
from node.core.host import Host
from node.service.server import build_server, mark_serving
from tests.support.nodes import InProcessNode

# ONE_REG ids (spec §2.1).
TIMER_CTL = 0x603000000013DF19
TIMER_CVAL = 0x603000000013DF02
TIMER_CNT = 0x603000000013DF1A
PTIMER_CTL = 0x603000000013DF11
PTIMER_CVAL = 0x603000000013DF12
PTIMER_CNT = 0x603000000013DF01
TIMER_OFFSET = 0x603000000013E703  # 2021 series only, opt-in
NOT_A_REG = 0x603000000013DF1F  # encoding 3,3,14,3,7 (spec case 29)
TIMER_CNT_U32 = 0x602000000013DF1A  # TIMER_CNT with a U32 size field (spec case 30)
TIMER_REGS = (TIMER_CTL, TIMER_CVAL, TIMER_CNT, PTIMER_CTL, PTIMER_CVAL, PTIMER_CNT)
# KVM_GET_REG_LIST's timer ids per kernel, in order (spec §2.1 table).
REG_LIST_PRE_6_4 = [TIMER_CTL, TIMER_CNT, TIMER_CVAL]
REG_LIST_SERIES_CAP = [TIMER_CTL, TIMER_CNT, TIMER_CVAL, TIMER_OFFSET]
REG_LIST_6_4 = [TIMER_CTL, TIMER_CNT, TIMER_CVAL, PTIMER_CTL, PTIMER_CNT, PTIMER_CVAL]

# vCPU device attributes (spec §2.2).
TIMER_CTRL_GROUP = 1
ATTR_VTIMER = 0
ATTR_PTIMER = 1
ATTR_HVTIMER = 2
ATTR_HPTIMER = 3

# Capabilities (spec §2.3).
CAP_COUNTER_OFFSET = 227
CAP_ARM_VTIMER_OFFSET = 206

# CNTHCTL_EL2 bits (spec §3.2).
CNTHCTL_EL1PCTEN = 1 << 0
CNTHCTL_EL1PCEN = 1 << 1
CNTHCTL_ECV = 1 << 12
VHE_SHIFT = 10

U64_MAX = (1 << 64) - 1
ERRNO_KEY = "kvm-errno"


# --- guest operations ----------------------------------------------------------


def read(reg: pb.SysReg) -> pb.GuestOp:
    return pb.GuestOp(read=reg)


def write(reg: pb.SysReg, value: int) -> pb.GuestOp:
    return pb.GuestOp(write=pb.SysRegWrite(reg=reg, value=value))


def wait(ticks: int) -> pb.GuestOp:
    return pb.GuestOp(wait_ticks=ticks)


# --- thin typed wrappers around the stub ----------------------------------------


async def step_to(stub: node_pb2_grpc.NodeStub, h: int) -> None:
    """Move a simulated node's host counter forward to exactly `h`."""
    clock: pb.GetClockResponse = await stub.GetClock(pb.GetClockRequest())
    assert clock.host_counter <= h, f"host counter already at {clock.host_counter} > {h}"
    stepped: pb.StepClockResponse = await stub.StepClock(
        pb.StepClockRequest(delta_ticks=h - clock.host_counter)
    )
    assert stepped.host_counter == h


async def host_counter(stub: node_pb2_grpc.NodeStub) -> int:
    clock: pb.GetClockResponse = await stub.GetClock(pb.GetClockRequest())
    return clock.host_counter


async def create_vm(stub: node_pb2_grpc.NodeStub, vm_id: str, *, userspace_irqchip: bool = False) -> str:
    resp: pb.CreateVmResponse = await stub.CreateVm(
        pb.CreateVmRequest(vm_id=vm_id, userspace_irqchip=userspace_irqchip)
    )
    return resp.vm_id


async def create_vcpu(stub: node_pb2_grpc.NodeStub, vm_id: str, index: int) -> None:
    await stub.CreateVcpu(pb.CreateVcpuRequest(vm_id=vm_id, vcpu_index=index))


async def get_reg(stub: node_pb2_grpc.NodeStub, vm_id: str, index: int, reg_id: int) -> int:
    resp: pb.GetOneRegResponse = await stub.GetOneReg(
        pb.GetOneRegRequest(vm_id=vm_id, vcpu_index=index, reg_id=reg_id)
    )
    return resp.value


async def set_reg(stub: node_pb2_grpc.NodeStub, vm_id: str, index: int, reg_id: int, value: int) -> None:
    await stub.SetOneReg(pb.SetOneRegRequest(vm_id=vm_id, vcpu_index=index, reg_id=reg_id, value=value))


async def get_attr(stub: node_pb2_grpc.NodeStub, vm_id: str, index: int, attr: int, group: int = 1) -> int:
    resp: pb.GetDeviceAttrResponse = await stub.GetDeviceAttr(
        pb.DeviceAttrRequest(vm_id=vm_id, vcpu_index=index, group=group, attr=attr)
    )
    return resp.value


async def set_attr(
    stub: node_pb2_grpc.NodeStub, vm_id: str, index: int, attr: int, value: int, group: int = 1
) -> None:
    await stub.SetDeviceAttr(
        pb.SetDeviceAttrRequest(vm_id=vm_id, vcpu_index=index, group=group, attr=attr, value=value)
    )


async def run(stub: node_pb2_grpc.NodeStub, vm_id: str, index: int, *ops: pb.GuestOp) -> pb.RunVcpuResponse:
    resp: pb.RunVcpuResponse = await stub.RunVcpu(
        pb.RunVcpuRequest(vm_id=vm_id, vcpu_index=index, ops=list(ops))
    )
    return resp


async def reg_list(stub: node_pb2_grpc.NodeStub, vm_id: str, index: int) -> list[int]:
    resp: pb.GetRegListResponse = await stub.GetRegList(pb.GetRegListRequest(vm_id=vm_id, vcpu_index=index))
    return list(resp.reg_ids)


async def vcpu_state(stub: node_pb2_grpc.NodeStub, vm_id: str, index: int) -> pb.VcpuStateInfo:
    resp: pb.VcpuStateInfo = await stub.GetVcpuState(pb.GetVcpuStateRequest(vm_id=vm_id, vcpu_index=index))
    return resp


async def vm_summary(stub: node_pb2_grpc.NodeStub, vm_id: str) -> pb.VmSummary:
    resp: pb.ListVmsResponse = await stub.ListVms(pb.ListVmsRequest())
    matches = [vm for vm in resp.vms if vm.vm_id == vm_id]
    assert len(matches) == 1, f"vm {vm_id!r} listed {len(matches)} times"
    return matches[0]


def levels(resp: pb.RunVcpuResponse) -> dict[int, tuple[int, bool]]:
    """IRQ lines of a RunVcpu response as {timer: (intid, level)}."""
    return {int(line.timer): (line.intid, line.level) for line in resp.irq_lines}


# --- errors and state ------------------------------------------------------------


def errno_of(err: grpc.aio.AioRpcError) -> str | None:
    """The `kvm-errno` trailing metadata value, or None when absent."""
    # grpc.aio returns a Metadata mapping here (the stubs describe the sync RpcError's tuple).
    metadata = cast(grpc.aio.Metadata, err.trailing_metadata())
    values = [str(v) for v in metadata.get_all(ERRNO_KEY)]
    assert len(values) <= 1, f"kvm-errno sent {len(values)} times"
    return values[0] if values else None


async def expect_error(
    call: Awaitable[object], code: grpc.StatusCode, errno: str | None
) -> grpc.aio.AioRpcError:
    """Await `call`, which must fail with exactly `code` and `kvm-errno` = `errno` (None: absent)."""
    try:
        await call
    except grpc.aio.AioRpcError as err:
        assert (err.code(), errno_of(err)) == (code, errno), err.details()
        return err
    raise AssertionError(f"call succeeded; expected {code.name} with kvm-errno {errno}")


async def observable_state(stub: node_pb2_grpc.NodeStub, vm_id: str, vcpus: Iterable[int]) -> list[object]:
    """Everything a client can read about a VM without changing it (the simulated clock stands still):
    every register GetRegList lists, and the vCPU state (which also shows the ptimer's CTL/CVAL
    where the kernel offers no ONE_REG for them)."""
    host: pb.HostInfo = await stub.GetHostInfo(pb.GetHostInfoRequest())
    host.ClearField("realtime_ns")
    state: list[object] = [host, await vm_summary(stub, vm_id)]
    indices = list(vcpus)
    listed = [(i, r) for i in indices for r in await reg_list(stub, vm_id, i)]
    regs: pb.GetRegsResponse = await stub.GetRegs(
        pb.GetRegsRequest(vm_id=vm_id, regs=[pb.RegValue(vcpu_index=i, reg_id=r) for i, r in listed])
    )
    state.append(regs)
    for i in indices:
        state.append(await vcpu_state(stub, vm_id, i))
        listing: pb.GetRegListResponse = await stub.GetRegList(
            pb.GetRegListRequest(vm_id=vm_id, vcpu_index=i)
        )
        state.append(listing)
    return state


def sysreg(value: int) -> pb.SysReg:
    """Any number as a SysReg field value (proto3 enums are open)."""
    return cast(pb.SysReg, value)


# --- a realtime node --------------------------------------------------------------


@contextlib.asynccontextmanager
async def realtime_node(
    features: HostFeatures | None = None, *, counter_base: int = 0
) -> AsyncIterator[InProcessNode]:
    """Like tests.support.nodes.in_process_node, but the host counter follows the machine's clock."""
    host = Host(
        "rt-node",
        features or HostFeatures(),
        SystemClock(),
        counter_base=counter_base,
        clock_mode=ClockMode.REALTIME,
    )
    server, port, health_servicer = build_server(host)
    await server.start()
    await mark_serving(health_servicer)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield InProcessNode(host, server, port, channel, node_pb2_grpc.NodeStub(channel))
    finally:
        await channel.close(None)
        await server.stop(grace=None)
