"""Spec §2.1 table and cases 41-42 over gRPC, on every profile x ECV x VHE combination.

Edge cases covered (the series before and after KVM_ENABLE_CAP(206)):
- GetRegList lists exactly the kernel's timer ids, in its order
- PTIMER_CTL/CVAL/CNT: GetOneReg/SetOneReg value/accepted on 6.4+, NOT_FOUND [ENOENT] before,
  with nothing changed; TIMER_OFFSET: NOT_FOUND [ENOENT] except on the series after its cap
- case 42: every listed id read and written back (one by one and as one GetRegs/SetRegs
  batch) leaves every value unchanged, with both timers armed by the guest
- timer IRQ attributes: before 6.4 a vCPU created after SetDeviceAttr keeps the defaults and
  the first RunVcpu is INVALID_ARGUMENT [EINVAL]; 6.4+ gives it the VM-wide value and runs
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from kvmtimer.v1 import node_pb2 as pb

from node.core.features import ALL_FEATURE_COMBINATIONS, ApiProfile, HostFeatures
from tests.integration.node_helpers import (
    ATTR_PTIMER,
    ATTR_VTIMER,
    CAP_ARM_VTIMER_OFFSET,
    PTIMER_CNT,
    PTIMER_CTL,
    PTIMER_CVAL,
    REG_LIST_6_4,
    REG_LIST_PRE_6_4,
    REG_LIST_SERIES_CAP,
    TIMER_CNT,
    TIMER_OFFSET,
    create_vcpu,
    create_vm,
    expect_error,
    get_attr,
    get_reg,
    observable_state,
    reg_list,
    run,
    set_attr,
    set_reg,
    step_to,
    write,
)
from tests.support.nodes import InProcessNode, in_process_node
from tests.unit.conftest import feature_id

CASES = [
    pytest.param((f, cap), id=feature_id(f) + ("-cap" if cap else ""))
    for f in ALL_FEATURE_COMBINATIONS
    for cap in ((False, True) if f.api_profile is ApiProfile.VCPU_OFFSETS else (False,))
]


def expected_list(features: HostFeatures, cap: bool) -> list[int]:
    if features.api_profile is ApiProfile.VM_COUNTER_OFFSET:
        return REG_LIST_6_4
    return REG_LIST_SERIES_CAP if cap else REG_LIST_PRE_6_4


@pytest_asyncio.fixture
async def armed(request: pytest.FixtureRequest) -> AsyncIterator[tuple[InProcessNode, HostFeatures, bool]]:
    features, cap = request.param
    async with in_process_node(features, counter_base=10_000) as n:
        await create_vm(n.stub, "vm")
        for index in (0, 1):
            await create_vcpu(n.stub, "vm", index)
        if cap:
            await n.stub.EnableCap(pb.EnableCapRequest(vm_id="vm", cap=CAP_ARM_VTIMER_OFFSET))
        await set_reg(n.stub, "vm", 0, TIMER_CNT, 1234)
        for index in (0, 1):
            await run(
                n.stub,
                "vm",
                index,
                write(pb.SYS_REG_CNTV_CVAL_EL0, 9000),
                write(pb.SYS_REG_CNTV_CTL_EL0, 1),
                write(pb.SYS_REG_CNTP_CVAL_EL0, 10_077),
                write(pb.SYS_REG_CNTP_CTL_EL0, 1),
            )
        yield n, features, cap


@pytest.mark.asyncio
@pytest.mark.parametrize("armed", CASES, indirect=True)
async def test_case41_reg_list_and_ptimer_ids(armed: tuple[InProcessNode, HostFeatures, bool]) -> None:
    n, features, cap = armed
    for index in (0, 1):
        assert await reg_list(n.stub, "vm", index) == expected_list(features, cap)
    before = await observable_state(n.stub, "vm", (0, 1))
    for reg_id in (PTIMER_CTL, PTIMER_CVAL, PTIMER_CNT):
        if features.has_ptimer_regs:
            value = await get_reg(n.stub, "vm", 1, reg_id)
            await set_reg(n.stub, "vm", 1, reg_id, value)
            continue
        await expect_error(
            n.stub.GetOneReg(pb.GetOneRegRequest(vm_id="vm", vcpu_index=1, reg_id=reg_id)),
            grpc.StatusCode.NOT_FOUND,
            "ENOENT",
        )
        await expect_error(
            n.stub.SetOneReg(pb.SetOneRegRequest(vm_id="vm", vcpu_index=1, reg_id=reg_id, value=7)),
            grpc.StatusCode.NOT_FOUND,
            "ENOENT",
        )
    if features.api_profile is ApiProfile.VCPU_OFFSETS and cap:
        value = await get_reg(n.stub, "vm", 0, TIMER_OFFSET)
        await set_reg(n.stub, "vm", 0, TIMER_OFFSET, value)
    else:
        await expect_error(
            n.stub.GetOneReg(pb.GetOneRegRequest(vm_id="vm", reg_id=TIMER_OFFSET)),
            grpc.StatusCode.NOT_FOUND,
            "ENOENT",
        )
    assert await observable_state(n.stub, "vm", (0, 1)) == before


@pytest.mark.asyncio
@pytest.mark.parametrize("armed", CASES, indirect=True)
async def test_case42_every_listed_id_reads_and_writes_back(
    armed: tuple[InProcessNode, HostFeatures, bool],
) -> None:
    n, _, _ = armed
    before = await observable_state(n.stub, "vm", (0, 1))
    for index in (0, 1):
        ids = await reg_list(n.stub, "vm", index)
        values = [await get_reg(n.stub, "vm", index, r) for r in ids]
        for reg_id, value in zip(ids, values, strict=True):
            await set_reg(n.stub, "vm", index, reg_id, value)
        assert [await get_reg(n.stub, "vm", index, r) for r in ids] == values
        got: pb.GetRegsResponse = await n.stub.GetRegs(
            pb.GetRegsRequest(vm_id="vm", regs=[pb.RegValue(vcpu_index=index, reg_id=r) for r in ids])
        )
        await n.stub.SetRegs(pb.SetRegsRequest(vm_id="vm", regs=list(got.regs)))
        assert [r.value for r in got.regs] == values
    assert await observable_state(n.stub, "vm", (0, 1)) == before


@pytest.mark.asyncio
@pytest.mark.parametrize("profile", list(ApiProfile), ids=lambda p: p.name)
async def test_irq_attr_and_a_later_vcpu(profile: ApiProfile) -> None:
    async with in_process_node(HostFeatures(api_profile=profile)) as n:
        await create_vm(n.stub, "vm")
        await create_vcpu(n.stub, "vm", 0)
        await set_attr(n.stub, "vm", 0, ATTR_VTIMER, 20)
        await create_vcpu(n.stub, "vm", 1)
        await step_to(n.stub, 100)
        if profile is ApiProfile.VM_COUNTER_OFFSET:
            assert await get_attr(n.stub, "vm", 1, ATTR_VTIMER) == 20
            resp = await run(n.stub, "vm", 1)
            assert {(line.timer, line.intid) for line in resp.irq_lines} == {
                (pb.TIMER_ID_VTIMER, 20),
                (pb.TIMER_ID_PTIMER, 30),
            }
            return
        assert (
            await get_attr(n.stub, "vm", 0, ATTR_VTIMER),
            await get_attr(n.stub, "vm", 1, ATTR_VTIMER),
        ) == (
            20,
            27,
        )
        before = await observable_state(n.stub, "vm", (0, 1))
        for index in (0, 1):
            await expect_error(
                n.stub.RunVcpu(pb.RunVcpuRequest(vm_id="vm", vcpu_index=index)),
                grpc.StatusCode.INVALID_ARGUMENT,
                "EINVAL",
            )
        await expect_error(
            n.stub.ResumeVm(pb.ResumeVmRequest(vm_id="vm")), grpc.StatusCode.INVALID_ARGUMENT, "EINVAL"
        )
        assert await observable_state(n.stub, "vm", (0, 1)) == before
        # A write now reaches both vCPUs; the PTIMER PPI still agrees (default 30 on both).
        await set_attr(n.stub, "vm", 1, ATTR_VTIMER, 20)
        assert await get_attr(n.stub, "vm", 0, ATTR_PTIMER) == 30
        await run(n.stub, "vm", 0)
