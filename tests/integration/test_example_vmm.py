"""The example VMM (python -m node.examples.vmm) against every kernel profile.

Edge cases covered:
- save prints every id GetRegList lists, per vCPU, with the values GET_ONE_REG returns
- migrate between two nodes of the same profile carries every listed register exactly
  (simulated clocks stand still, so even the counters read back equal) and loses nothing
- 6.4+ -> 5.15: the PTIMER registers cannot be written there and are reported as not carried
- stop/continue: the counter written back at continue is the one read at stop, so guest
  time stalls by exactly the ticks the host ran while stopped (QEMU's default)
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json

import grpc
import pytest
from kvmtimer.v1 import node_pb2 as pb
from kvmtimer.v1 import node_pb2_grpc

from node.core.features import ApiProfile, HostFeatures
from node.examples import vmm
from tests.integration.node_helpers import create_vcpu, create_vm, get_reg, reg_list, run, write
from tests.support.nodes import InProcessNode, in_process_node


async def guest_vm(n: InProcessNode) -> None:
    await create_vm(n.stub, "vm")
    for index in (0, 1):
        await create_vcpu(n.stub, "vm", index)
    for index in (0, 1):
        await run(
            n.stub,
            "vm",
            index,
            write(pb.SYS_REG_CNTV_CVAL_EL0, 5000 + index),
            write(pb.SYS_REG_CNTV_CTL_EL0, 1),
            write(pb.SYS_REG_CNTP_CVAL_EL0, 7000 + index),
            write(pb.SYS_REG_CNTP_CTL_EL0, 3),
        )


async def run_vmm(*args: str) -> dict[str, object]:
    out = io.StringIO()

    def call() -> int:
        with contextlib.redirect_stdout(out):
            return vmm.main(list(args))

    assert await asyncio.to_thread(call) == 0
    parsed = json.loads(out.getvalue())
    assert isinstance(parsed, dict)
    return parsed


@pytest.mark.asyncio
@pytest.mark.parametrize("profile", list(ApiProfile), ids=lambda p: p.name)
async def test_save_and_migrate_every_listed_register(profile: ApiProfile) -> None:
    async with (
        in_process_node(HostFeatures(api_profile=profile), node_id="a", counter_base=10_000) as a,
        in_process_node(HostFeatures(api_profile=profile), node_id="b", counter_base=99_000) as b,
    ):
        await guest_vm(a)
        await a.stub.PauseVm(pb.PauseVmRequest(vm_id="vm"))
        saved = await run_vmm("save", "--node", a.address, "--vm", "vm")
        for index in (0, 1):
            ids = await reg_list(a.stub, "vm", index)
            values = [await get_reg(a.stub, "vm", index, r) for r in ids]
            assert saved[str(index)] == [[f"{r:#018x}", v] for r, v in zip(ids, values, strict=True)]
        result = await run_vmm("migrate", "--node", a.address, "--vm", "vm", "--to", b.address)
        assert result == {"not_carried": []}
        assert (await a.stub.ListVms(pb.ListVmsRequest())).vms == []
        for index in (0, 1):
            regs = saved[str(index)]
            assert isinstance(regs, list)
            assert await reg_list(b.stub, "vm", index) == [int(r, 16) for r, _ in regs]
            for reg_hex, value in regs:
                assert await get_reg(b.stub, "vm", index, int(reg_hex, 16)) == value


@pytest.mark.asyncio
async def test_migrate_from_6_4_to_5_15_reports_the_ptimer_registers() -> None:
    async with (
        in_process_node(HostFeatures(api_profile=ApiProfile.VM_COUNTER_OFFSET), node_id="a") as a,
        in_process_node(HostFeatures(api_profile=ApiProfile.BY_VALUE), node_id="b") as b,
    ):
        await guest_vm(a)
        result = await run_vmm("migrate", "--node", a.address, "--vm", "vm", "--to", b.address)
        lost = [f"vcpu{i}:{n}" for i in (0, 1) for n in ("PTIMER_CTL", "PTIMER_CVAL", "PTIMER_CNT")]
        assert result == {"not_carried": lost}
        state: pb.VcpuStateInfo = await b.stub.GetVcpuState(pb.GetVcpuStateRequest(vm_id="vm"))
        ptimer = next(t for t in state.timers if t.timer == pb.TIMER_ID_PTIMER)
        assert (ptimer.ctl, ptimer.cval) == (0, 0)  # not carried: the destination's reset state


@pytest.mark.asyncio
@pytest.mark.parametrize("profile", list(ApiProfile), ids=lambda p: p.name)
async def test_stop_continue_stalls_guest_time(profile: ApiProfile) -> None:
    async with in_process_node(HostFeatures(api_profile=profile), counter_base=10_000) as n:
        await guest_vm(n)
        await n.stub.ResumeVm(pb.ResumeVmRequest(vm_id="vm"))
        with grpc.insecure_channel(n.address) as channel:
            stub = node_pb2_grpc.NodeStub(channel)
            cnt = await asyncio.to_thread(vmm.stop, stub, "vm")
            await n.stub.StepClock(pb.StepClockRequest(delta_ticks=1234))
            await asyncio.to_thread(vmm.cont, stub, "vm", cnt)
        assert await get_reg(n.stub, "vm", 1, 0x603000000013DF1A) == cnt  # TIMER_CNT, both vCPUs
        summary = (await n.stub.ListVms(pb.ListVmsRequest())).vms[0]
        assert summary.running
        result = await run_vmm("stop-continue", "--node", n.address, "--vm", "vm")
        assert result == {"timer_cnt": cnt}
