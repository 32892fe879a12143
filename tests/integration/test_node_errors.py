"""Every bad-input class over gRPC: exact status code, exact `kvm-errno`, and no state change.

Table (issue 3): ENOENT->NOT_FOUND, EINVAL->INVALID_ARGUMENT, EBUSY->FAILED_PRECONDITION,
ENXIO->UNIMPLEMENTED, EEXIST->ALREADY_EXISTS, EPERM->PERMISSION_DENIED; unknown VM/vCPU
-> NOT_FOUND without kvm-errno; StepClock on a realtime node and malformed RunVcpu ops
(empty oneof, unknown SysReg) carry no errno either.
Cases: 18-22 (attributes), 25-26 (counter-offset ioctl, reserved != 0 and busy), 29-31
(register ids), plus EnableCap/ioctl on a profile without them, EBUSY RunVcpu while
resumed, EEXIST VM/vCPU, EPERM PTIMER_CNT write before 6.4. After each error the
observable state of the VM (host info, VM summary, all timer registers, vCPU state,
register list) is re-read and must be unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
import pytest_asyncio
from kvmtimer.v1 import node_pb2 as pb
from kvmtimer.v1 import node_pb2_grpc

from node.core.features import ApiProfile, HostFeatures
from tests.integration.node_helpers import (
    ATTR_PTIMER,
    ATTR_VTIMER,
    CAP_ARM_VTIMER_OFFSET,
    CAP_COUNTER_OFFSET,
    NOT_A_REG,
    PTIMER_CNT,
    PTIMER_CTL,
    PTIMER_CVAL,
    TIMER_CNT,
    TIMER_CNT_U32,
    TIMER_CTL,
    TIMER_CVAL,
    TIMER_OFFSET,
    U64_MAX,
    create_vcpu,
    create_vm,
    expect_error,
    get_attr,
    get_reg,
    observable_state,
    read,
    realtime_node,
    reg_list,
    run,
    set_attr,
    set_reg,
    step_to,
    sysreg,
    vcpu_state,
    vm_summary,
    wait,
    write,
)
from tests.support.nodes import InProcessNode, in_process_node
from tests.support.wait import until


async def has_run(stub: node_pb2_grpc.NodeStub, vm_id: str, index: int) -> bool:
    return (await vcpu_state(stub, vm_id, index)).has_run


NOT_FOUND = grpc.StatusCode.NOT_FOUND
INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED
EXISTS = grpc.StatusCode.ALREADY_EXISTS
DENIED = grpc.StatusCode.PERMISSION_DENIED

Stub = node_pb2_grpc.NodeStub
Call = Callable[[Stub], Awaitable[object]]


async def setup_vm(stub: Stub, vm_id: str = "vm") -> None:
    """Two vCPUs created at H=1000, H=3000, some timer state and a non-zero poffset."""
    await create_vm(stub, vm_id)
    await step_to(stub, 1000)
    await create_vcpu(stub, vm_id, 0)
    await create_vcpu(stub, vm_id, 1)
    await step_to(stub, 3000)
    await set_reg(stub, vm_id, 0, TIMER_CVAL, 2500)
    await set_reg(stub, vm_id, 0, TIMER_CTL, 0x1)
    if PTIMER_CVAL in await reg_list(stub, vm_id, 1):  # 6.4+ only (spec §2.1)
        await set_reg(stub, vm_id, 1, PTIMER_CVAL, 99)


@pytest_asyncio.fixture(params=[p for p in ApiProfile], ids=lambda p: p.name)
async def any_node(request: pytest.FixtureRequest) -> AsyncIterator[InProcessNode]:
    """A node of every API profile with VM "vm" from setup_vm()."""
    async with in_process_node(HostFeatures(api_profile=request.param)) as n:
        await setup_vm(n.stub)
        yield n


@pytest_asyncio.fixture
async def node() -> AsyncIterator[InProcessNode]:
    """A 6.4+ (VM_COUNTER_OFFSET) node with VM "vm" from setup_vm()."""
    async with in_process_node() as n:
        await setup_vm(n.stub)
        yield n


async def assert_fails_cleanly(
    n: InProcessNode, call: Call, code: grpc.StatusCode, errno: str | None, vcpus: tuple[int, ...] = (0, 1)
) -> grpc.aio.AioRpcError:
    before = await observable_state(n.stub, "vm", vcpus)
    err = await expect_error(call(n.stub), code, errno)
    assert await observable_state(n.stub, "vm", vcpus) == before
    return err


# --- ENOENT -> NOT_FOUND (cases 29-31) --------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("reg_id", [NOT_A_REG, TIMER_CNT_U32, TIMER_OFFSET])
async def test_enoent_get_one_reg(any_node: InProcessNode, reg_id: int) -> None:
    await assert_fails_cleanly(
        any_node,
        lambda s: s.GetOneReg(pb.GetOneRegRequest(vm_id="vm", vcpu_index=0, reg_id=reg_id)),
        NOT_FOUND,
        "ENOENT",
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("reg_id", [NOT_A_REG, TIMER_CNT_U32, TIMER_OFFSET, 0x603000000013DF1B])
async def test_enoent_set_one_reg(any_node: InProcessNode, reg_id: int) -> None:
    await assert_fails_cleanly(
        any_node,
        lambda s: s.SetOneReg(pb.SetOneRegRequest(vm_id="vm", vcpu_index=1, reg_id=reg_id, value=123)),
        NOT_FOUND,
        "ENOENT",
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("reg_id", [0, 2**64 - 1, 0x6030_0001_0013_DF1A, 0x4030_0000_0013_DF1A])
async def test_foreign_upper_id_half_is_einval(any_node: InProcessNode, reg_id: int) -> None:
    # kvm_arm_get_reg/set_reg check the id's upper half first: -EINVAL, not -ENOENT.
    await assert_fails_cleanly(
        any_node,
        lambda s: s.GetOneReg(pb.GetOneRegRequest(vm_id="vm", vcpu_index=0, reg_id=reg_id)),
        INVALID,
        "EINVAL",
    )
    await assert_fails_cleanly(
        any_node,
        lambda s: s.SetOneReg(pb.SetOneRegRequest(vm_id="vm", vcpu_index=1, reg_id=reg_id, value=1)),
        INVALID,
        "EINVAL",
    )
    await assert_fails_cleanly(
        any_node,
        lambda s: s.SetRegs(
            pb.SetRegsRequest(
                vm_id="vm",
                regs=[pb.RegValue(vcpu_index=0, reg_id=TIMER_CNT, value=1), pb.RegValue(reg_id=reg_id)],
            )
        ),
        INVALID,
        "EINVAL",
    )


@pytest.mark.asyncio
async def test_case31_timer_offset_enoent_until_cap_enabled() -> None:
    async with in_process_node(HostFeatures(api_profile=ApiProfile.VCPU_OFFSETS)) as n:
        await setup_vm(n.stub)
        await assert_fails_cleanly(
            n,
            lambda s: s.GetOneReg(pb.GetOneRegRequest(vm_id="vm", vcpu_index=0, reg_id=TIMER_OFFSET)),
            NOT_FOUND,
            "ENOENT",
        )
        await n.stub.EnableCap(pb.EnableCapRequest(vm_id="vm", cap=CAP_ARM_VTIMER_OFFSET))
        assert await get_reg(n.stub, "vm", 0, TIMER_OFFSET) == 1000  # voffset 1000 - poffset 0
        # A U32-sized TIMER_OFFSET id stays unknown.
        await assert_fails_cleanly(
            n,
            lambda s: s.GetOneReg(pb.GetOneRegRequest(vm_id="vm", vcpu_index=0, reg_id=0x602000000013E703)),
            NOT_FOUND,
            "ENOENT",
        )


# --- EINVAL -> INVALID_ARGUMENT ---------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("reserved", [1, 2**64 - 1])
async def test_case25_counter_offset_reserved_nonzero(node: InProcessNode, reserved: int) -> None:
    await assert_fails_cleanly(
        node,
        lambda s: s.SetCounterOffset(
            pb.SetCounterOffsetRequest(vm_id="vm", counter_offset=7000, reserved=reserved)
        ),
        INVALID,
        "EINVAL",
    )
    # No flag was set either: by-value counter writes still move the offset.
    await set_reg(node.stub, "vm", 0, TIMER_CNT, 1000)
    assert (await vcpu_state(node.stub, "vm", 1)).voffset == 2000


@pytest.mark.asyncio
@pytest.mark.parametrize("profile", [ApiProfile.BY_VALUE, ApiProfile.VCPU_OFFSETS], ids=lambda p: p.name)
async def test_counter_offset_ioctl_unsupported_before_6_4(profile: ApiProfile) -> None:
    async with in_process_node(HostFeatures(api_profile=profile)) as n:
        await setup_vm(n.stub)
        await assert_fails_cleanly(
            n,
            lambda s: s.SetCounterOffset(pb.SetCounterOffsetRequest(vm_id="vm", counter_offset=7000)),
            INVALID,
            "EINVAL",
        )
        await set_reg(n.stub, "vm", 0, TIMER_CNT, 1000)
        assert (await vcpu_state(n.stub, "vm", 1)).voffset == 2000


@pytest.mark.asyncio
@pytest.mark.parametrize("value", [35, 15, 0, 32, 1020, 2**32 + 27])
async def test_case18_set_attr_not_a_ppi(any_node: InProcessNode, value: int) -> None:
    await assert_fails_cleanly(
        any_node,
        lambda s: s.SetDeviceAttr(
            pb.SetDeviceAttrRequest(vm_id="vm", vcpu_index=0, group=1, attr=ATTR_VTIMER, value=value)
        ),
        INVALID,
        "EINVAL",
    )
    assert await get_attr(any_node.stub, "vm", 1, ATTR_VTIMER) == 27


@pytest.mark.asyncio
async def test_case20_set_attr_without_irqchip(any_node: InProcessNode) -> None:
    await create_vm(any_node.stub, "uirq", userspace_irqchip=True)
    await create_vcpu(any_node.stub, "uirq", 0)
    before = await observable_state(any_node.stub, "uirq", (0,))
    await expect_error(
        any_node.stub.SetDeviceAttr(
            pb.SetDeviceAttrRequest(vm_id="uirq", vcpu_index=0, group=1, attr=ATTR_VTIMER, value=27)
        ),
        INVALID,
        "EINVAL",
    )
    assert await observable_state(any_node.stub, "uirq", (0,)) == before


@pytest.mark.asyncio
async def test_case22_duplicate_ppis_fail_first_run(node: InProcessNode) -> None:
    await set_attr(node.stub, "vm", 0, ATTR_VTIMER, 30)  # accepted: uniqueness is checked at first run
    assert await get_attr(node.stub, "vm", 1, ATTR_VTIMER) == 30
    err = await assert_fails_cleanly(
        node, lambda s: s.RunVcpu(pb.RunVcpuRequest(vm_id="vm", vcpu_index=0)), INVALID, "EINVAL"
    )
    assert "distinct" in (err.details() or "")
    await assert_fails_cleanly(node, lambda s: s.ResumeVm(pb.ResumeVmRequest(vm_id="vm")), INVALID, "EINVAL")
    # Nothing froze: the PPIs can still be fixed, and then the vCPU runs.
    assert (await vcpu_state(node.stub, "vm", 0)).has_run is False
    await set_attr(node.stub, "vm", 1, ATTR_PTIMER, 29)
    result = await run(node.stub, "vm", 0)
    assert [(line.intid, line.level) for line in result.irq_lines] == [(30, False), (29, False)]
    result = await run(node.stub, "vm", 0, wait(500))  # guest count reaches CVAL 2500
    assert [(line.intid, line.level) for line in result.irq_lines] == [(30, True), (29, False)]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("profile", "cap"),
    [
        (ApiProfile.BY_VALUE, CAP_ARM_VTIMER_OFFSET),
        (ApiProfile.VM_COUNTER_OFFSET, CAP_ARM_VTIMER_OFFSET),
        # KVM_CAP_COUNTER_OFFSET is an extension, not something KVM_ENABLE_CAP turns on.
        (ApiProfile.VM_COUNTER_OFFSET, CAP_COUNTER_OFFSET),
        (ApiProfile.VCPU_OFFSETS, 9999),
    ],
    ids=["by-value-206", "6.4-206", "6.4-227", "series-9999"],
)
async def test_enable_cap_unsupported(profile: ApiProfile, cap: int) -> None:
    async with in_process_node(HostFeatures(api_profile=profile)) as n:
        await setup_vm(n.stub)
        await assert_fails_cleanly(
            n, lambda s: s.EnableCap(pb.EnableCapRequest(vm_id="vm", cap=cap)), INVALID, "EINVAL"
        )


@pytest.mark.asyncio
async def test_create_vcpu_index_out_of_range(node: InProcessNode) -> None:
    await assert_fails_cleanly(
        node, lambda s: s.CreateVcpu(pb.CreateVcpuRequest(vm_id="vm", vcpu_index=512)), INVALID, "EINVAL"
    )


# --- EBUSY -> FAILED_PRECONDITION -------------------------------------------------------


@pytest.mark.asyncio
async def test_counter_offset_while_resumed(node: InProcessNode) -> None:
    await node.stub.ResumeVm(pb.ResumeVmRequest(vm_id="vm"))
    await assert_fails_cleanly(
        node,
        lambda s: s.SetCounterOffset(pb.SetCounterOffsetRequest(vm_id="vm", counter_offset=7000)),
        PRECONDITION,
        "EBUSY",
    )
    await node.stub.PauseVm(pb.PauseVmRequest(vm_id="vm"))
    await node.stub.SetCounterOffset(pb.SetCounterOffsetRequest(vm_id="vm", counter_offset=7000))
    assert await get_reg(node.stub, "vm", 1, PTIMER_CNT) == 3000 - 7000 + 2**64


@pytest.mark.asyncio
async def test_run_vcpu_while_resumed(node: InProcessNode) -> None:
    await node.stub.ResumeVm(pb.ResumeVmRequest(vm_id="vm"))
    await assert_fails_cleanly(
        node,
        lambda s: s.RunVcpu(
            pb.RunVcpuRequest(vm_id="vm", vcpu_index=1, ops=[write(pb.SYS_REG_CNTV_CVAL_EL0, 1), wait(10)])
        ),
        PRECONDITION,
        "EBUSY",
    )


@pytest.mark.asyncio
async def test_case19_set_attr_after_first_run(any_node: InProcessNode) -> None:
    await run(any_node.stub, "vm", 1)
    await assert_fails_cleanly(
        any_node,
        lambda s: s.SetDeviceAttr(
            pb.SetDeviceAttrRequest(vm_id="vm", vcpu_index=1, group=1, attr=ATTR_VTIMER, value=20)
        ),
        PRECONDITION,
        "EBUSY",
    )
    assert await get_attr(any_node.stub, "vm", 0, ATTR_VTIMER) == 27


@pytest.mark.asyncio
async def test_case19_set_attr_after_resume(node: InProcessNode) -> None:
    await node.stub.ResumeVm(pb.ResumeVmRequest(vm_id="vm"))
    await node.stub.PauseVm(pb.PauseVmRequest(vm_id="vm"))
    await assert_fails_cleanly(
        node,
        lambda s: s.SetDeviceAttr(
            pb.SetDeviceAttrRequest(vm_id="vm", vcpu_index=0, group=1, attr=ATTR_PTIMER, value=20)
        ),
        PRECONDITION,
        "EBUSY",
    )


@pytest.mark.asyncio
async def test_case26_counter_offset_while_run_vcpu_in_flight() -> None:
    """Realtime node: a RunVcpu wait really sleeps with the vCPU held inside KVM_RUN."""
    async with realtime_node() as n:
        await create_vm(n.stub, "vm")
        await create_vcpu(n.stub, "vm", 0)
        await create_vcpu(n.stub, "vm", 1)
        before: pb.VmSummary = await vm_summary(n.stub, "vm")
        in_flight = asyncio.ensure_future(run(n.stub, "vm", 1, wait(12_500_000)))  # 0.5 s at 25 MHz
        try:
            await until(lambda: has_run(n.stub, "vm", 1), timeout_s=5.0, what="vCPU 1 in KVM_RUN")
            await expect_error(
                n.stub.SetCounterOffset(pb.SetCounterOffsetRequest(vm_id="vm", counter_offset=7000)),
                PRECONDITION,
                "EBUSY",
            )
            # Another KVM_RUN on the same vCPU is refused too.
            await expect_error(run(n.stub, "vm", 1), PRECONDITION, "EBUSY")
            after = await vm_summary(n.stub, "vm")
            assert (after.voffset, after.poffset, after.running) == (before.voffset, before.poffset, False)
        finally:
            result = await in_flight
        assert result.host_counter >= 12_500_000
        await n.stub.SetCounterOffset(pb.SetCounterOffsetRequest(vm_id="vm", counter_offset=7000))
        assert (await vm_summary(n.stub, "vm")).voffset == 7000


# --- ENXIO -> UNIMPLEMENTED --------------------------------------------------------------


def attr_calls(group: int, attr: int) -> list[Call]:
    return [
        lambda s: s.HasDeviceAttr(pb.DeviceAttrRequest(vm_id="vm", vcpu_index=0, group=group, attr=attr)),
        lambda s: s.GetDeviceAttr(pb.DeviceAttrRequest(vm_id="vm", vcpu_index=0, group=group, attr=attr)),
        lambda s: s.SetDeviceAttr(
            pb.SetDeviceAttrRequest(vm_id="vm", vcpu_index=0, group=group, attr=attr, value=20)
        ),
    ]


@pytest.mark.asyncio
@pytest.mark.parametrize(("group", "attr"), [(1, 7), (5, 0), (0, 0), (1, 2**64 - 1)])
async def test_case21_unknown_attr_or_group(any_node: InProcessNode, group: int, attr: int) -> None:
    for call in attr_calls(group, attr):
        await assert_fails_cleanly(any_node, call, UNIMPLEMENTED, "ENXIO")


@pytest.mark.asyncio
@pytest.mark.parametrize("profile", [ApiProfile.BY_VALUE, ApiProfile.VM_COUNTER_OFFSET], ids=lambda p: p.name)
@pytest.mark.parametrize("attr", [2, 3])
async def test_case21_el2_ppis_and_phys_offset_absent(profile: ApiProfile, attr: int) -> None:
    """Without NV and outside the 2021 series, attrs 2 (HVTIMER / PHYS_OFFSET) and 3 are ENXIO."""
    async with in_process_node(HostFeatures(api_profile=profile)) as n:
        await setup_vm(n.stub)
        for call in attr_calls(1, attr):
            await assert_fails_cleanly(n, call, UNIMPLEMENTED, "ENXIO")


# --- EEXIST -> ALREADY_EXISTS ------------------------------------------------------------


@pytest.mark.asyncio
async def test_duplicate_vm_id(node: InProcessNode) -> None:
    await assert_fails_cleanly(node, lambda s: s.CreateVm(pb.CreateVmRequest(vm_id="vm")), EXISTS, "EEXIST")


@pytest.mark.asyncio
async def test_duplicate_vcpu(node: InProcessNode) -> None:
    await step_to(node.stub, 4000)  # a second creation would reset voffset to 4000
    await assert_fails_cleanly(
        node, lambda s: s.CreateVcpu(pb.CreateVcpuRequest(vm_id="vm", vcpu_index=1)), EXISTS, "EEXIST"
    )
    assert (await vcpu_state(node.stub, "vm", 0)).voffset == 1000


# --- case 41: the physical timer's ids are ENOENT before 6.4 (the EPERM test's successor) --------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("profile", "cap"),
    [(ApiProfile.BY_VALUE, False), (ApiProfile.VCPU_OFFSETS, False), (ApiProfile.VCPU_OFFSETS, True)],
    ids=["BY_VALUE", "VCPU_OFFSETS", "VCPU_OFFSETS-cap"],
)
@pytest.mark.parametrize("reg_id", [PTIMER_CTL, PTIMER_CVAL, PTIMER_CNT], ids=["CTL", "CVAL", "CNT"])
async def test_case41_ptimer_ids_before_6_4(profile: ApiProfile, cap: bool, reg_id: int) -> None:
    async with in_process_node(HostFeatures(api_profile=profile)) as n:
        await setup_vm(n.stub)
        if cap:
            await n.stub.EnableCap(pb.EnableCapRequest(vm_id="vm", cap=CAP_ARM_VTIMER_OFFSET))
        # The guest arms its physical timer itself (a VMM cannot).
        await run(n.stub, "vm", 1, write(pb.SYS_REG_CNTP_CVAL_EL0, 4000), write(pb.SYS_REG_CNTP_CTL_EL0, 1))
        for value in (0, 5, U64_MAX):
            await assert_fails_cleanly(
                n,
                lambda s, v=value: s.SetOneReg(  # type: ignore[misc]
                    pb.SetOneRegRequest(vm_id="vm", vcpu_index=1, reg_id=reg_id, value=v)
                ),
                NOT_FOUND,
                "ENOENT",
            )
        await assert_fails_cleanly(
            n,
            lambda s: s.GetOneReg(pb.GetOneRegRequest(vm_id="vm", vcpu_index=1, reg_id=reg_id)),
            NOT_FOUND,
            "ENOENT",
        )
        await assert_fails_cleanly(
            n,
            lambda s: s.GetRegs(
                pb.GetRegsRequest(
                    vm_id="vm", regs=[pb.RegValue(reg_id=TIMER_CNT), pb.RegValue(reg_id=reg_id)]
                )
            ),
            NOT_FOUND,
            "ENOENT",
        )
        state = await vcpu_state(n.stub, "vm", 1)
        ptimer = [t for t in state.timers if t.timer == pb.TIMER_ID_PTIMER]
        assert (state.cntpct, ptimer[0].cval, ptimer[0].ctl & 3) == (3000, 4000, 1)


# --- unknown VM / vCPU: NOT_FOUND without kvm-errno ----------------------------------------


def vm_calls(vm: str) -> dict[str, Call]:
    return {
        "EnableCap": lambda s: s.EnableCap(pb.EnableCapRequest(vm_id=vm, cap=CAP_ARM_VTIMER_OFFSET)),
        "DestroyVm": lambda s: s.DestroyVm(pb.DestroyVmRequest(vm_id=vm)),
        "CreateVcpu": lambda s: s.CreateVcpu(pb.CreateVcpuRequest(vm_id=vm, vcpu_index=5)),
        "SetCounterOffset": lambda s: s.SetCounterOffset(pb.SetCounterOffsetRequest(vm_id=vm, reserved=1)),
        "PauseVm": lambda s: s.PauseVm(pb.PauseVmRequest(vm_id=vm)),
        "ResumeVm": lambda s: s.ResumeVm(pb.ResumeVmRequest(vm_id=vm)),
        "GetRegs": lambda s: s.GetRegs(pb.GetRegsRequest(vm_id=vm)),
        "SetRegs": lambda s: s.SetRegs(pb.SetRegsRequest(vm_id=vm)),
        **vcpu_calls(vm, 0),
    }


def vcpu_calls(vm: str, index: int) -> dict[str, Call]:
    return {
        "ResetVcpu": lambda s: s.ResetVcpu(pb.ResetVcpuRequest(vm_id=vm, vcpu_index=index)),
        "GetOneReg": lambda s: s.GetOneReg(pb.GetOneRegRequest(vm_id=vm, vcpu_index=index, reg_id=TIMER_CNT)),
        # A bad id too: the vCPU lookup comes first (no ENOENT for the id).
        "GetOneRegBadId": lambda s: s.GetOneReg(
            pb.GetOneRegRequest(vm_id=vm, vcpu_index=index, reg_id=NOT_A_REG)
        ),
        "SetOneReg": lambda s: s.SetOneReg(
            pb.SetOneRegRequest(vm_id=vm, vcpu_index=index, reg_id=TIMER_CNT, value=1)
        ),
        "GetRegList": lambda s: s.GetRegList(pb.GetRegListRequest(vm_id=vm, vcpu_index=index)),
        "GetRegsEntry": lambda s: s.GetRegs(
            pb.GetRegsRequest(vm_id=vm, regs=[pb.RegValue(vcpu_index=index, reg_id=TIMER_CNT)])
        ),
        "SetRegsEntry": lambda s: s.SetRegs(
            pb.SetRegsRequest(vm_id=vm, regs=[pb.RegValue(vcpu_index=index, reg_id=TIMER_CNT, value=1)])
        ),
        "HasDeviceAttr": lambda s: s.HasDeviceAttr(
            pb.DeviceAttrRequest(vm_id=vm, vcpu_index=index, group=1, attr=0)
        ),
        "GetDeviceAttr": lambda s: s.GetDeviceAttr(
            pb.DeviceAttrRequest(vm_id=vm, vcpu_index=index, group=1, attr=0)
        ),
        "SetDeviceAttr": lambda s: s.SetDeviceAttr(
            pb.SetDeviceAttrRequest(vm_id=vm, vcpu_index=index, group=1, attr=0, value=20)
        ),
        "RunVcpu": lambda s: s.RunVcpu(
            pb.RunVcpuRequest(vm_id=vm, vcpu_index=index, ops=[read(pb.SYS_REG_CNTVCT_EL0)])
        ),
        "GetVcpuState": lambda s: s.GetVcpuState(pb.GetVcpuStateRequest(vm_id=vm, vcpu_index=index)),
    }


@pytest.mark.asyncio
@pytest.mark.parametrize("rpc", sorted(vm_calls("x")))
async def test_unknown_vm(node: InProcessNode, rpc: str) -> None:
    err = await assert_fails_cleanly(node, vm_calls("no-such-vm")[rpc], NOT_FOUND, None)
    assert "no-such-vm" in (err.details() or "")


@pytest.mark.asyncio
@pytest.mark.parametrize("rpc", sorted(vcpu_calls("vm", 0)))
@pytest.mark.parametrize("index", [2, 511, 2**32 - 1])
async def test_unknown_vcpu(node: InProcessNode, rpc: str, index: int) -> None:
    await assert_fails_cleanly(node, vcpu_calls("vm", index)[rpc], NOT_FOUND, None)


# --- malformed input: INVALID_ARGUMENT without kvm-errno ------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "bad_op",
    [pb.GuestOp(), pb.GuestOp(read=sysreg(99)), pb.GuestOp(write=pb.SysRegWrite(reg=sysreg(99), value=1))],
    ids=["empty-oneof", "read-sysreg-99", "write-sysreg-99"],
)
async def test_malformed_run_vcpu_op_runs_nothing(node: InProcessNode, bad_op: pb.GuestOp) -> None:
    ops = [write(pb.SYS_REG_CNTV_CVAL_EL0, 1), wait(1000), read(pb.SYS_REG_CNTVCT_EL0), bad_op]
    err = await assert_fails_cleanly(
        node, lambda s: s.RunVcpu(pb.RunVcpuRequest(vm_id="vm", vcpu_index=0, ops=ops)), INVALID, None
    )
    assert "op 3" in (err.details() or "")
    state = await vcpu_state(node.stub, "vm", 0)
    assert (state.has_run, state.host_counter, state.timers[0].cval) == (False, 3000, 2500)


@pytest.mark.asyncio
async def test_unspecified_sysreg_is_malformed(node: InProcessNode) -> None:
    await assert_fails_cleanly(
        node,
        lambda s: s.RunVcpu(
            pb.RunVcpuRequest(vm_id="vm", vcpu_index=0, ops=[pb.GuestOp(read=pb.SYS_REG_UNSPECIFIED)])
        ),
        INVALID,
        None,
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("vm_id", ["x" * 129, "bad\nid", "tab\tid"])
async def test_bad_vm_id(node: InProcessNode, vm_id: str) -> None:
    await assert_fails_cleanly(node, lambda s: s.CreateVm(pb.CreateVmRequest(vm_id=vm_id)), INVALID, None)


# --- clock mode ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_step_clock_on_realtime_node() -> None:
    async with realtime_node() as n:
        await create_vm(n.stub, "vm")
        await create_vcpu(n.stub, "vm", 0)
        err = await expect_error(n.stub.StepClock(pb.StepClockRequest(delta_ticks=1000)), PRECONDITION, None)
        assert "simulated" in (err.details() or "")
        # Large step requests are refused the same way (and the counter did not jump).
        await expect_error(n.stub.StepClock(pb.StepClockRequest(delta_ticks=2**63)), PRECONDITION, None)
        clock: pb.GetClockResponse = await n.stub.GetClock(pb.GetClockRequest())
        assert clock.host_counter < 25_000_000 * 60
        info: pb.HostInfo = await n.stub.GetHostInfo(pb.GetHostInfoRequest())
        assert info.clock_mode == pb.CLOCK_MODE_REALTIME


@pytest.mark.asyncio
async def test_server_survives_every_error(node: InProcessNode) -> None:
    """After a burst of bad requests the node still answers exactly."""
    for call in [*vm_calls("nope").values(), *attr_calls(9, 9)]:
        with pytest.raises(grpc.aio.AioRpcError):
            await call(node.stub)
    assert await get_reg(node.stub, "vm", 0, TIMER_CNT) == 2000
    assert await get_reg(node.stub, "vm", 0, TIMER_CTL) == 0x1
    assert await get_reg(node.stub, "vm", 1, PTIMER_CVAL) == 99
