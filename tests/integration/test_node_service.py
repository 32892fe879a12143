"""kvmtimer.v1.Node through a real in-process grpc.aio server: exact values of the spec's cases.

Covers (spec §5): counter/offset cases 1-6 (vCPU creation resets voffset, by-value
TIMER_CNT/PTIMER_CNT writes are VM-wide, 1:1 ticking while paused, u64 wrap of offsets
and of the host counter), timer registers 7-15 (ISTATUS on read only, TVAL signed view
and writes, IRQ line as a level through RunVcpu), device attributes 16-17 (default PPIs,
NV PPIs, VM-wide set), the VM counter-offset ioctl 23-24 and 27-28 (also after a run),
the 2021 series' TIMER_OFFSET / PHYS_OFFSET controls (case 31), batched GetRegs/SetRegs
(order, last-writer-wins, all-or-nothing on a bad entry), host info / clock fields and
the VM lifecycle RPCs. Error cases live in test_node_errors.py, traps in test_node_traps.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from kvmtimer.v1 import node_pb2 as pb

from node.core.features import ApiProfile, EcvLevel, HostFeatures
from tests.integration.node_helpers import (
    ATTR_HPTIMER,
    ATTR_HVTIMER,
    ATTR_PTIMER,
    ATTR_VTIMER,
    CAP_ARM_VTIMER_OFFSET,
    CAP_COUNTER_OFFSET,
    NOT_A_REG,
    PTIMER_CNT,
    PTIMER_CTL,
    PTIMER_CVAL,
    TIMER_CNT,
    TIMER_CTL,
    TIMER_CVAL,
    TIMER_OFFSET,
    U64_MAX,
    create_vcpu,
    create_vm,
    expect_error,
    get_attr,
    get_reg,
    host_counter,
    levels,
    observable_state,
    read,
    run,
    set_attr,
    set_reg,
    step_to,
    vcpu_state,
    vm_summary,
    wait,
    write,
)
from tests.support.nodes import InProcessNode, in_process_node

VTIMER = pb.TIMER_ID_VTIMER
PTIMER = pb.TIMER_ID_PTIMER
PROFILES = [ApiProfile.BY_VALUE, ApiProfile.VCPU_OFFSETS, ApiProfile.VM_COUNTER_OFFSET]


@pytest_asyncio.fixture
async def node() -> AsyncIterator[InProcessNode]:
    """Default host: 25 MHz, VHE, ECV=0, VM_COUNTER_OFFSET (6.4+), H starts at 0."""
    async with in_process_node() as n:
        yield n


# --- host info, clock, VM lifecycle ------------------------------------------------


@pytest.mark.asyncio
async def test_host_info_reports_every_field_exactly() -> None:
    features = HostFeatures(
        cntfrq_hz=1_000_000_000, ecv=EcvLevel.CNTPOFF, vhe=True, api_profile=ApiProfile.VCPU_OFFSETS, nv=True
    )
    async with in_process_node(features, node_id="host-a", counter_base=12_345) as n:
        await create_vm(n.stub, "vm-a")
        await create_vcpu(n.stub, "vm-a", 0)
        await create_vcpu(n.stub, "vm-a", 3)
        info: pb.HostInfo = await n.stub.GetHostInfo(pb.GetHostInfoRequest())
    assert info == pb.HostInfo(
        node_id="host-a",
        cntfrq_hz=1_000_000_000,
        ecv=2,
        vhe=True,
        api_profile=pb.API_PROFILE_VCPU_OFFSETS,
        clock_mode=pb.CLOCK_MODE_SIMULATED,
        host_counter=12_345,
        realtime_ns=1_700_000_000 * 10**9,  # ManualClock's default epoch, no time elapsed
        nv=True,
        has_cntpoff=True,
        vm_count=1,
        vcpu_count=2,
    )


@pytest.mark.asyncio
async def test_has_cntpoff_needs_vhe() -> None:
    async with in_process_node(HostFeatures(ecv=EcvLevel.CNTPOFF, vhe=False)) as n:
        info: pb.HostInfo = await n.stub.GetHostInfo(pb.GetHostInfoRequest())
    assert (info.ecv, info.vhe, info.has_cntpoff, info.api_profile) == (
        2,
        False,
        False,
        pb.API_PROFILE_VM_COUNTER_OFFSET,
    )


@pytest.mark.asyncio
async def test_step_clock_and_get_clock_move_together(node: InProcessNode) -> None:
    stepped: pb.StepClockResponse = await node.stub.StepClock(pb.StepClockRequest(delta_ticks=25_000_000))
    # One second at 25 MHz.
    assert stepped == pb.StepClockResponse(host_counter=25_000_000, realtime_ns=1_700_000_001 * 10**9)
    clock: pb.GetClockResponse = await node.stub.GetClock(pb.GetClockRequest())
    assert clock == pb.GetClockResponse(
        host_counter=25_000_000, realtime_ns=1_700_000_001 * 10**9, cntfrq_hz=25_000_000
    )
    stepped = await node.stub.StepClock(pb.StepClockRequest(delta_ticks=1))
    assert stepped.host_counter == 25_000_001
    assert stepped.realtime_ns == 1_700_000_001 * 10**9 + 40  # one tick = 40 ns
    stepped = await node.stub.StepClock(pb.StepClockRequest(delta_ticks=0))
    assert stepped.host_counter == 25_000_001


@pytest.mark.asyncio
async def test_host_counter_wraps_at_2_pow_64() -> None:
    async with in_process_node(counter_base=U64_MAX - 9) as n:
        await create_vm(n.stub, "vm")
        await create_vcpu(n.stub, "vm", 0)  # voffset = 2^64 - 10
        assert await get_reg(n.stub, "vm", 0, PTIMER_CNT) == U64_MAX - 9
        await step_to(n.stub, U64_MAX)
        stepped: pb.StepClockResponse = await n.stub.StepClock(pb.StepClockRequest(delta_ticks=20))
        assert stepped.host_counter == 19
        assert await get_reg(n.stub, "vm", 0, TIMER_CNT) == 29
        assert await get_reg(n.stub, "vm", 0, PTIMER_CNT) == 19


@pytest.mark.asyncio
async def test_vm_lifecycle(node: InProcessNode) -> None:
    assert await create_vm(node.stub, "") == "vm-1"
    assert await create_vm(node.stub, "named") == "named"
    assert await create_vm(node.stub, "") == "vm-2"
    await create_vcpu(node.stub, "named", 0)
    listed: pb.ListVmsResponse = await node.stub.ListVms(pb.ListVmsRequest())
    assert sorted(vm.vm_id for vm in listed.vms) == ["named", "vm-1", "vm-2"]
    summary = await vm_summary(node.stub, "named")
    assert (summary.vcpu_count, summary.running, summary.voffset, summary.poffset) == (1, False, 0, 0)
    assert summary.owner == pb.VmOwner()

    await node.stub.ResumeVm(pb.ResumeVmRequest(vm_id="named"))
    assert (await vm_summary(node.stub, "named")).running is True
    await node.stub.ResumeVm(pb.ResumeVmRequest(vm_id="named"))  # idempotent
    await node.stub.PauseVm(pb.PauseVmRequest(vm_id="named"))
    assert (await vm_summary(node.stub, "named")).running is False

    await node.stub.DestroyVm(pb.DestroyVmRequest(vm_id="named"))
    await expect_error(
        node.stub.GetOneReg(pb.GetOneRegRequest(vm_id="named", vcpu_index=0, reg_id=TIMER_CNT)),
        grpc.StatusCode.NOT_FOUND,
        None,
    )
    # The id is free again and the new VM starts from scratch.
    await step_to(node.stub, 777)
    await create_vm(node.stub, "named")
    await create_vcpu(node.stub, "named", 0)
    assert (await vm_summary(node.stub, "named")).voffset == 777


# --- counter / offset (cases 1-6) ----------------------------------------------------


@pytest.mark.asyncio
async def test_case1_each_vcpu_creation_resets_vm_voffset(node: InProcessNode) -> None:
    await create_vm(node.stub, "vm")
    await step_to(node.stub, 1000)
    await create_vcpu(node.stub, "vm", 0)
    assert (await vcpu_state(node.stub, "vm", 0)).voffset == 1000
    await step_to(node.stub, 1200)
    await create_vcpu(node.stub, "vm", 1)
    await step_to(node.stub, 1500)
    assert await get_reg(node.stub, "vm", 0, TIMER_CNT) == 300
    assert await get_reg(node.stub, "vm", 1, TIMER_CNT) == 300
    assert (await vcpu_state(node.stub, "vm", 0)).voffset == 1200
    assert (await vm_summary(node.stub, "vm")).voffset == 1200


@pytest.mark.asyncio
@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
async def test_case2_timer_cnt_write_is_vm_wide(profile: ApiProfile) -> None:
    async with in_process_node(HostFeatures(api_profile=profile)) as n:
        await create_vm(n.stub, "vm")
        await create_vcpu(n.stub, "vm", 0)
        await create_vcpu(n.stub, "vm", 1)
        await step_to(n.stub, 1000)
        await set_reg(n.stub, "vm", 0, TIMER_CNT, 400)
        assert (await vcpu_state(n.stub, "vm", 0)).voffset == 600
        assert (await vcpu_state(n.stub, "vm", 1)).voffset == 600
        await step_to(n.stub, 1500)
        assert await get_reg(n.stub, "vm", 1, TIMER_CNT) == 900
        assert await get_reg(n.stub, "vm", 0, TIMER_CNT) == 900
        # The physical view is untouched by a virtual counter write.
        assert (await vcpu_state(n.stub, "vm", 1)).cntpct == 1500


@pytest.mark.asyncio
async def test_case3_counter_ticks_1_to_1_while_paused(node: InProcessNode) -> None:
    await create_vm(node.stub, "vm")
    await create_vcpu(node.stub, "vm", 0)
    await step_to(node.stub, 1000)
    await set_reg(node.stub, "vm", 0, TIMER_CNT, 400)  # voffset = 600
    await step_to(node.stub, 2000)
    assert await get_reg(node.stub, "vm", 0, TIMER_CNT) == 1400
    await step_to(node.stub, 2600)
    assert await get_reg(node.stub, "vm", 0, TIMER_CNT) == 2000
    # Resume and pause do not stop or move the counter either.
    await node.stub.ResumeVm(pb.ResumeVmRequest(vm_id="vm"))
    await step_to(node.stub, 2700)
    await node.stub.PauseVm(pb.PauseVmRequest(vm_id="vm"))
    await step_to(node.stub, 2800)
    assert await get_reg(node.stub, "vm", 0, TIMER_CNT) == 2200


@pytest.mark.asyncio
@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
async def test_case4_fresh_vm_physical_counter_is_host_counter(profile: ApiProfile) -> None:
    async with in_process_node(HostFeatures(api_profile=profile)) as n:
        await create_vm(n.stub, "vm")
        await step_to(n.stub, 300)
        await create_vcpu(n.stub, "vm", 0)
        await step_to(n.stub, 5000)
        if profile is ApiProfile.VM_COUNTER_OFFSET:
            assert await get_reg(n.stub, "vm", 0, PTIMER_CNT) == 5000
        else:  # case 41: not a ONE_REG register before 6.4; the guest still reads it
            await expect_error(
                n.stub.GetOneReg(pb.GetOneRegRequest(vm_id="vm", reg_id=PTIMER_CNT)),
                grpc.StatusCode.NOT_FOUND,
                "ENOENT",
            )
        result = await run(n.stub, "vm", 0, read(pb.SYS_REG_CNTPCT_EL0))
        assert result.results[0].value == 5000
        assert await get_reg(n.stub, "vm", 0, TIMER_CNT) == 4700


@pytest.mark.asyncio
async def test_case5_ptimer_cnt_write_sets_vm_poffset(node: InProcessNode) -> None:
    await create_vm(node.stub, "vm")
    await create_vcpu(node.stub, "vm", 0)
    await create_vcpu(node.stub, "vm", 1)
    await step_to(node.stub, 1000)
    await set_reg(node.stub, "vm", 0, TIMER_CNT, 400)  # voffset = 600
    await step_to(node.stub, 5000)
    await set_reg(node.stub, "vm", 0, PTIMER_CNT, 100)
    for index in (0, 1):
        state = await vcpu_state(node.stub, "vm", index)
        assert (state.voffset, state.poffset) == (600, 4900)
        assert await get_reg(node.stub, "vm", index, TIMER_CNT) == 4400
        assert await get_reg(node.stub, "vm", index, PTIMER_CNT) == 100


@pytest.mark.asyncio
async def test_case6_offset_arithmetic_wraps(node: InProcessNode) -> None:
    await create_vm(node.stub, "vm")
    await create_vcpu(node.stub, "vm", 0)
    await step_to(node.stub, 100)
    await set_reg(node.stub, "vm", 0, TIMER_CNT, 500)
    assert (await vcpu_state(node.stub, "vm", 0)).voffset == 0xFFFFFFFFFFFFFE70
    await step_to(node.stub, 200)
    assert await get_reg(node.stub, "vm", 0, TIMER_CNT) == 600
    # Writing the largest value also wraps: voffset = 200 - (2^64 - 1) = 201.
    await set_reg(node.stub, "vm", 0, TIMER_CNT, U64_MAX)
    assert (await vcpu_state(node.stub, "vm", 0)).voffset == 201
    await step_to(node.stub, 201)
    assert await get_reg(node.stub, "vm", 0, TIMER_CNT) == 0


# --- timer registers (cases 7-15) ------------------------------------------------------


@pytest_asyncio.fixture
async def vm1(node: InProcessNode) -> InProcessNode:
    """`node` with VM "vm" and vCPU 0 created at H=0 (voffset = poffset = 0)."""
    await create_vm(node.stub, "vm")
    await create_vcpu(node.stub, "vm", 0)
    return node


@pytest.mark.asyncio
async def test_case7_istatus_dropped_on_write_recomputed_on_read(vm1: InProcessNode) -> None:
    await set_reg(vm1.stub, "vm", 0, TIMER_CVAL, 1000)
    await set_reg(vm1.stub, "vm", 0, TIMER_CTL, 0x7)
    assert await get_reg(vm1.stub, "vm", 0, TIMER_CTL) == 0x3
    assert (await vcpu_state(vm1.stub, "vm", 0)).timers[VTIMER].ctl == 0x3
    await step_to(vm1.stub, 1000)
    assert await get_reg(vm1.stub, "vm", 0, TIMER_CTL) == 0x7
    assert (await vcpu_state(vm1.stub, "vm", 0)).timers[VTIMER].ctl == 0x3


@pytest.mark.asyncio
async def test_case8_istatus_reported_while_disabled(vm1: InProcessNode) -> None:
    await set_reg(vm1.stub, "vm", 0, TIMER_CTL, 0)
    await set_reg(vm1.stub, "vm", 0, TIMER_CVAL, 100)
    await step_to(vm1.stub, 150)
    assert await get_reg(vm1.stub, "vm", 0, TIMER_CTL) == 0x4
    result = await run(vm1.stub, "vm", 0, read(pb.SYS_REG_CNTV_CTL_EL0))
    assert result.results[0].value == 0x4
    assert levels(result)[VTIMER] == (27, False)


@pytest.mark.asyncio
async def test_case9_cval_round_trips_and_leaves_offsets(vm1: InProcessNode) -> None:
    await step_to(vm1.stub, 5000)
    await set_reg(vm1.stub, "vm", 0, PTIMER_CNT, 4000)
    before = await vcpu_state(vm1.stub, "vm", 0)
    for reg in (TIMER_CVAL, PTIMER_CVAL):
        await set_reg(vm1.stub, "vm", 0, reg, 0xDEADBEEF)
        assert await get_reg(vm1.stub, "vm", 0, reg) == 0xDEADBEEF
    after = await vcpu_state(vm1.stub, "vm", 0)
    assert (after.voffset, after.poffset) == (before.voffset, before.poffset) == (0, 1000)
    assert [t.cval for t in after.timers][:2] == [0xDEADBEEF, 0xDEADBEEF]
    # All 64 bits are kept.
    await set_reg(vm1.stub, "vm", 0, TIMER_CVAL, 0xFEEDFACE_DEADBEEF)
    assert await get_reg(vm1.stub, "vm", 0, TIMER_CVAL) == 0xFEEDFACE_DEADBEEF
    result = await run(vm1.stub, "vm", 0, read(pb.SYS_REG_CNTV_CVAL_EL0))
    assert result.results[0].value == 0xFEEDFACE_DEADBEEF


@pytest.mark.asyncio
async def test_case10_tval_is_signed_32_bit_view(vm1: InProcessNode) -> None:
    await set_reg(vm1.stub, "vm", 0, TIMER_CVAL, 1000)
    await step_to(vm1.stub, 900)
    result = await run(
        vm1.stub, "vm", 0, read(pb.SYS_REG_CNTV_TVAL_EL0), wait(200), read(pb.SYS_REG_CNTV_TVAL_EL0)
    )
    assert [r.value for r in result.results] == [100, 1100, 0xFFFFFF9C]
    assert [r.trapped for r in result.results] == [False, False, False]
    assert result.host_counter == 1100


@pytest.mark.asyncio
async def test_case11_tval_write_sets_cval_from_now(vm1: InProcessNode) -> None:
    await step_to(vm1.stub, 5000)
    result = await run(
        vm1.stub,
        "vm",
        0,
        write(pb.SYS_REG_CNTV_TVAL_EL0, 0xFFFFFFF6),
        read(pb.SYS_REG_CNTV_CVAL_EL0),
        read(pb.SYS_REG_CNTV_CTL_EL0),
        write(pb.SYS_REG_CNTV_TVAL_EL0, 0x10),
        read(pb.SYS_REG_CNTV_CVAL_EL0),
        read(pb.SYS_REG_CNTV_CTL_EL0),
    )
    assert [r.value for r in result.results] == [0xFFFFFFF6, 4990, 0x4, 0x10, 5016, 0x0]
    assert await get_reg(vm1.stub, "vm", 0, TIMER_CVAL) == 5016


@pytest.mark.asyncio
async def test_case12_vtimer_line_rises_exactly_at_cval() -> None:
    async with in_process_node() as n:
        await create_vm(n.stub, "vm")
        await step_to(n.stub, 1000)
        await create_vcpu(n.stub, "vm", 0)  # voffset = 1000
        await set_reg(n.stub, "vm", 0, TIMER_CVAL, 2000)
        await set_reg(n.stub, "vm", 0, TIMER_CTL, 0x1)
        await step_to(n.stub, 2999)
        result = await run(n.stub, "vm", 0)
        assert levels(result) == {VTIMER: (27, False), PTIMER: (30, False)}
        result = await run(n.stub, "vm", 0, wait(1))
        assert result.results[0].value == 3000
        assert levels(result) == {VTIMER: (27, True), PTIMER: (30, False)}
        state = await vcpu_state(n.stub, "vm", 0)
        assert (state.timers[VTIMER].intid, state.timers[VTIMER].level) == (27, True)


@pytest.mark.asyncio
async def test_case13_masked_timer_line_low_but_istatus_set(vm1: InProcessNode) -> None:
    await set_reg(vm1.stub, "vm", 0, TIMER_CVAL, 50)
    await set_reg(vm1.stub, "vm", 0, TIMER_CTL, 0x3)
    await step_to(vm1.stub, 60)
    result = await run(vm1.stub, "vm", 0, read(pb.SYS_REG_CNTV_CTL_EL0))
    assert result.results[0].value == 0x7
    assert levels(result)[VTIMER] == (27, False)
    assert await get_reg(vm1.stub, "vm", 0, TIMER_CTL) == 0x7
    # Unmasking raises the line at once.
    result = await run(vm1.stub, "vm", 0, write(pb.SYS_REG_CNTV_CTL_EL0, 0x1))
    assert levels(result)[VTIMER] == (27, True)


@pytest.mark.asyncio
async def test_case14_line_is_a_level_not_a_latched_edge(vm1: InProcessNode) -> None:
    await set_reg(vm1.stub, "vm", 0, TIMER_CTL, 0x1)
    await set_reg(vm1.stub, "vm", 0, TIMER_CVAL, 2000)
    await step_to(vm1.stub, 2500)
    assert levels(await run(vm1.stub, "vm", 0))[VTIMER] == (27, True)
    result = await run(vm1.stub, "vm", 0, write(pb.SYS_REG_CNTV_CVAL_EL0, 10000))
    assert levels(result)[VTIMER] == (27, False)
    result = await run(vm1.stub, "vm", 0, wait(10000 - 2500 - 1))
    assert (result.host_counter, levels(result)[VTIMER]) == (9999, (27, False))
    result = await run(vm1.stub, "vm", 0, wait(1))
    assert (result.host_counter, levels(result)[VTIMER]) == (10000, (27, True))


@pytest.mark.asyncio
async def test_case15_vcpu_reset_clears_ctl_keeps_offsets(vm1: InProcessNode) -> None:
    await step_to(vm1.stub, 4000)
    await set_reg(vm1.stub, "vm", 0, TIMER_CNT, 1000)  # voffset 3000
    await set_reg(vm1.stub, "vm", 0, PTIMER_CNT, 2000)  # poffset 2000
    await set_reg(vm1.stub, "vm", 0, TIMER_CVAL, 900)  # passed (guest count 1000)
    await set_reg(vm1.stub, "vm", 0, PTIMER_CVAL, 1_000_000)  # future
    await set_reg(vm1.stub, "vm", 0, TIMER_CTL, 0x1)
    await set_reg(vm1.stub, "vm", 0, PTIMER_CTL, 0x3)
    await vm1.stub.ResetVcpu(pb.ResetVcpuRequest(vm_id="vm", vcpu_index=0))
    state = await vcpu_state(vm1.stub, "vm", 0)
    assert [(t.ctl, t.cval) for t in state.timers] == [(0, 900), (0, 1_000_000)]
    assert (state.voffset, state.poffset) == (3000, 2000)
    assert await get_reg(vm1.stub, "vm", 0, TIMER_CTL) == 0x4
    assert await get_reg(vm1.stub, "vm", 0, PTIMER_CTL) == 0x0
    assert await get_reg(vm1.stub, "vm", 0, TIMER_CNT) == 1000


# --- device attributes (cases 16-17) -------------------------------------------------


@pytest.mark.asyncio
async def test_case16_default_ppis(vm1: InProcessNode) -> None:
    assert await get_attr(vm1.stub, "vm", 0, ATTR_VTIMER) == 27
    assert await get_attr(vm1.stub, "vm", 0, ATTR_PTIMER) == 30
    for attr in (ATTR_VTIMER, ATTR_PTIMER):
        await vm1.stub.HasDeviceAttr(pb.DeviceAttrRequest(vm_id="vm", vcpu_index=0, group=1, attr=attr))


@pytest.mark.asyncio
async def test_case16_nv_host_has_el2_timer_ppis() -> None:
    async with in_process_node(HostFeatures(nv=True)) as n:
        await create_vm(n.stub, "vm")
        await create_vcpu(n.stub, "vm", 0)
        ppis = [await get_attr(n.stub, "vm", 0, a) for a in (0, 1, 2, 3)]
        assert ppis == [27, 30, 28, 26]
        for attr in (ATTR_HVTIMER, ATTR_HPTIMER):
            await n.stub.HasDeviceAttr(pb.DeviceAttrRequest(vm_id="vm", vcpu_index=0, group=1, attr=attr))
        result = await run(n.stub, "vm", 0)
        assert levels(result) == {0: (27, False), 1: (30, False), 2: (28, False), 3: (26, False)}


@pytest.mark.asyncio
async def test_case17_set_attr_is_vm_wide(node: InProcessNode) -> None:
    await create_vm(node.stub, "vm")
    await create_vcpu(node.stub, "vm", 0)
    await create_vcpu(node.stub, "vm", 1)
    await set_attr(node.stub, "vm", 0, ATTR_VTIMER, 20)
    await set_attr(node.stub, "vm", 1, ATTR_PTIMER, 16)
    for index in (0, 1):
        assert await get_attr(node.stub, "vm", index, ATTR_VTIMER) == 20
        assert await get_attr(node.stub, "vm", index, ATTR_PTIMER) == 16
    # The new INTIDs are the ones the lines are reported on after the first run.
    assert levels(await run(node.stub, "vm", 1)) == {VTIMER: (20, False), PTIMER: (16, False)}


# --- VM-wide counter offset ioctl (cases 23-28) ---------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        (ApiProfile.BY_VALUE, {CAP_COUNTER_OFFSET: 0, CAP_ARM_VTIMER_OFFSET: 0}),
        (ApiProfile.VCPU_OFFSETS, {CAP_COUNTER_OFFSET: 0, CAP_ARM_VTIMER_OFFSET: 1}),
        (ApiProfile.VM_COUNTER_OFFSET, {CAP_COUNTER_OFFSET: 1, CAP_ARM_VTIMER_OFFSET: 0}),
    ],
    ids=lambda v: v.name if isinstance(v, ApiProfile) else None,
)
async def test_case23_check_extension(profile: ApiProfile, expected: dict[int, int]) -> None:
    async with in_process_node(HostFeatures(api_profile=profile)) as n:
        for cap, value in {**expected, 70: 1, 89: 1, 0: 0, 9999: 0}.items():
            resp: pb.CheckExtensionResponse = await n.stub.CheckExtension(pb.CheckExtensionRequest(cap=cap))
            assert (cap, resp.value) == (cap, value)


@pytest_asyncio.fixture
async def vm2_offset(node: InProcessNode) -> InProcessNode:
    """Case 24 set-up: 2 vCPUs, KVM_ARM_SET_COUNTER_OFFSET(7000) at H=10000."""
    await create_vm(node.stub, "vm")
    await create_vcpu(node.stub, "vm", 0)
    await create_vcpu(node.stub, "vm", 1)
    await step_to(node.stub, 10000)
    await node.stub.SetCounterOffset(pb.SetCounterOffsetRequest(vm_id="vm", counter_offset=7000, reserved=0))
    return node


@pytest.mark.asyncio
async def test_case24_counter_offset_sets_both_views_on_all_vcpus(vm2_offset: InProcessNode) -> None:
    stub = vm2_offset.stub
    for index in (0, 1):
        assert await get_reg(stub, "vm", index, TIMER_CNT) == 3000
        assert await get_reg(stub, "vm", index, PTIMER_CNT) == 3000
        state = await vcpu_state(stub, "vm", index)
        assert (state.voffset, state.poffset, state.cntvct, state.cntpct) == (7000, 7000, 3000, 3000)
    result = await run(stub, "vm", 1, read(pb.SYS_REG_CNTVCT_EL0), read(pb.SYS_REG_CNTPCT_EL0))
    assert [r.value for r in result.results] == [3000, 3000]


@pytest.mark.asyncio
async def test_case27_counter_writes_ignored_after_ioctl(vm2_offset: InProcessNode) -> None:
    stub = vm2_offset.stub
    await set_reg(stub, "vm", 0, TIMER_CNT, 0)
    await set_reg(stub, "vm", 1, PTIMER_CNT, 0)
    await stub.SetRegs(
        pb.SetRegsRequest(vm_id="vm", regs=[pb.RegValue(vcpu_index=0, reg_id=TIMER_CNT, value=5)])
    )
    for index in (0, 1):
        assert await get_reg(stub, "vm", index, TIMER_CNT) == 3000
        assert await get_reg(stub, "vm", index, PTIMER_CNT) == 3000


@pytest.mark.asyncio
async def test_case28_vcpu_creation_keeps_counter_offset(vm2_offset: InProcessNode) -> None:
    stub = vm2_offset.stub
    await step_to(stub, 12000)
    await create_vcpu(stub, "vm", 2)
    assert await get_reg(stub, "vm", 2, TIMER_CNT) == 5000
    assert await get_reg(stub, "vm", 0, TIMER_CNT) == 5000
    assert await get_reg(stub, "vm", 2, PTIMER_CNT) == 5000


@pytest.mark.asyncio
async def test_counter_offset_accepted_whenever_paused_and_overwrites(vm2_offset: InProcessNode) -> None:
    stub = vm2_offset.stub
    await run(stub, "vm", 0, read(pb.SYS_REG_CNTVCT_EL0))  # vCPUs have run
    await stub.SetCounterOffset(pb.SetCounterOffsetRequest(vm_id="vm", counter_offset=9000))
    assert await get_reg(stub, "vm", 1, TIMER_CNT) == 1000
    await stub.ResumeVm(pb.ResumeVmRequest(vm_id="vm"))
    await stub.PauseVm(pb.PauseVmRequest(vm_id="vm"))
    # Offsets larger than H wrap.
    await stub.SetCounterOffset(pb.SetCounterOffsetRequest(vm_id="vm", counter_offset=10001))
    assert await get_reg(stub, "vm", 0, TIMER_CNT) == U64_MAX
    assert await get_reg(stub, "vm", 0, PTIMER_CNT) == U64_MAX


# --- 2021 series controls (case 31, VCPU_OFFSETS profile) -------------------------------


@pytest.mark.asyncio
async def test_case31_series_timer_offset_and_phys_offset() -> None:
    async with in_process_node(HostFeatures(api_profile=ApiProfile.VCPU_OFFSETS)) as n:
        await create_vm(n.stub, "vm")
        await step_to(n.stub, 1000)
        await create_vcpu(n.stub, "vm", 0)
        await create_vcpu(n.stub, "vm", 1)
        before: pb.GetRegListResponse = await n.stub.GetRegList(
            pb.GetRegListRequest(vm_id="vm", vcpu_index=0)
        )
        assert list(before.reg_ids) == [TIMER_CTL, TIMER_CNT, TIMER_CVAL]

        await n.stub.EnableCap(pb.EnableCapRequest(vm_id="vm", cap=CAP_ARM_VTIMER_OFFSET))
        after: pb.GetRegListResponse = await n.stub.GetRegList(pb.GetRegListRequest(vm_id="vm", vcpu_index=1))
        assert list(after.reg_ids) == [*before.reg_ids, TIMER_OFFSET]
        assert await get_reg(n.stub, "vm", 0, TIMER_OFFSET) == 1000  # voffset - poffset

        # Physical offset P = 300: both guest counters move back by 300; CNTVOFF is kept.
        await n.stub.HasDeviceAttr(pb.DeviceAttrRequest(vm_id="vm", vcpu_index=0, group=1, attr=2))
        await set_attr(n.stub, "vm", 0, 2, 300)
        assert await get_attr(n.stub, "vm", 1, 2) == 300
        state = await vcpu_state(n.stub, "vm", 1)
        assert (state.voffset, state.poffset) == (1300, 300)
        assert await get_reg(n.stub, "vm", 1, TIMER_OFFSET) == 1000
        await step_to(n.stub, 5000)
        assert (await vcpu_state(n.stub, "vm", 1)).cntpct == 4700
        assert await get_reg(n.stub, "vm", 1, TIMER_CNT) == 3700

        # Guest CNTVOFF = 200 is relative to the guest physical counter.
        await set_reg(n.stub, "vm", 1, TIMER_OFFSET, 200)
        state = await vcpu_state(n.stub, "vm", 0)
        assert (state.voffset, state.poffset) == (500, 300)
        assert await get_reg(n.stub, "vm", 0, TIMER_CNT) == 4500
        assert (await vcpu_state(n.stub, "vm", 0)).cntpct == 4700
        # This VHE host has no CNTPOFF (ECV=0), so P != 0 makes CNTPCT reads trap.
        result = await run(n.stub, "vm", 0, read(pb.SYS_REG_CNTPCT_EL0), read(pb.SYS_REG_CNTVCT_EL0))
        assert [(r.value, r.trapped) for r in result.results] == [(4700, True), (4500, False)]


# --- batched registers ---------------------------------------------------------------


@pytest_asyncio.fixture
async def vm2(node: InProcessNode) -> InProcessNode:
    """VM "vm", vCPUs 0 and 1 created at H=1000, then H=5000, distinct timer state per vCPU."""
    await create_vm(node.stub, "vm")
    await step_to(node.stub, 1000)
    await create_vcpu(node.stub, "vm", 0)
    await create_vcpu(node.stub, "vm", 1)
    await step_to(node.stub, 5000)
    await set_reg(node.stub, "vm", 0, PTIMER_CNT, 4500)  # poffset 500
    await set_reg(node.stub, "vm", 0, TIMER_CVAL, 3000)  # guest count 4000: passed
    await set_reg(node.stub, "vm", 0, TIMER_CTL, 0x1)
    await set_reg(node.stub, "vm", 1, TIMER_CVAL, 9000)
    await set_reg(node.stub, "vm", 1, PTIMER_CVAL, 4500)  # guest count 4500: met
    await set_reg(node.stub, "vm", 1, PTIMER_CTL, 0x3)
    return node


@pytest.mark.asyncio
async def test_get_regs_returns_exact_values_in_request_order(vm2: InProcessNode) -> None:
    request = [
        (1, PTIMER_CTL),
        (0, TIMER_CTL),
        (0, TIMER_CVAL),
        (0, TIMER_CNT),
        (0, PTIMER_CTL),
        (0, PTIMER_CVAL),
        (0, PTIMER_CNT),
        (1, TIMER_CTL),
        (1, TIMER_CVAL),
        (1, TIMER_CNT),
        (1, PTIMER_CVAL),
        (1, PTIMER_CNT),
        (0, TIMER_CNT),  # duplicates are fine
    ]
    resp: pb.GetRegsResponse = await vm2.stub.GetRegs(
        pb.GetRegsRequest(vm_id="vm", regs=[pb.RegValue(vcpu_index=i, reg_id=r) for i, r in request])
    )
    got = [(r.vcpu_index, r.reg_id, r.value) for r in resp.regs]
    # The batch is read at one (host counter, realtime) sample, returned with it.
    assert (resp.host_counter, resp.realtime_ns) == (5000, 1_700_000_000 * 10**9 + 5000 * 40)
    values = [0x7, 0x5, 3000, 4000, 0x4, 0, 4500, 0x0, 9000, 4000, 4500, 4500, 4000]
    assert got == [(i, r, v) for (i, r), v in zip(request, values, strict=True)]
    # Each value equals its unary GetOneReg twin.
    for i, r, v in got:
        assert await get_reg(vm2.stub, "vm", i, r) == v


@pytest.mark.asyncio
async def test_get_regs_empty_batch(vm2: InProcessNode) -> None:
    resp: pb.GetRegsResponse = await vm2.stub.GetRegs(pb.GetRegsRequest(vm_id="vm"))
    assert list(resp.regs) == []
    await vm2.stub.SetRegs(pb.SetRegsRequest(vm_id="vm"))


@pytest.mark.asyncio
async def test_set_regs_applies_in_order_last_writer_wins(vm2: InProcessNode) -> None:
    await vm2.stub.SetRegs(
        pb.SetRegsRequest(
            vm_id="vm",
            regs=[
                pb.RegValue(vcpu_index=0, reg_id=TIMER_CNT, value=100),  # voffset 4900
                pb.RegValue(vcpu_index=1, reg_id=TIMER_CNT, value=2000),  # voffset 3000 (wins)
                pb.RegValue(vcpu_index=1, reg_id=PTIMER_CNT, value=4999),  # poffset 1
                pb.RegValue(vcpu_index=0, reg_id=TIMER_CTL, value=0x7),
                pb.RegValue(vcpu_index=1, reg_id=TIMER_CVAL, value=U64_MAX),
                pb.RegValue(vcpu_index=1, reg_id=PTIMER_CTL, value=0),
                pb.RegValue(vcpu_index=1, reg_id=PTIMER_CTL, value=0x1),
            ],
        )
    )
    s0 = await vcpu_state(vm2.stub, "vm", 0)
    s1 = await vcpu_state(vm2.stub, "vm", 1)
    assert (s0.voffset, s0.poffset) == (s1.voffset, s1.poffset) == (3000, 1)
    assert [(t.ctl, t.cval) for t in s0.timers] == [(0x3, 3000), (0x0, 0)]
    assert [(t.ctl, t.cval) for t in s1.timers] == [(0x0, U64_MAX), (0x1, 4500)]
    assert await get_reg(vm2.stub, "vm", 0, TIMER_CNT) == 2000


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("bad", "code", "errno"),
    [
        (pb.RegValue(vcpu_index=1, reg_id=0x603000000013DF1F, value=1), grpc.StatusCode.NOT_FOUND, "ENOENT"),
        (pb.RegValue(vcpu_index=0, reg_id=0x602000000013DF1A, value=1), grpc.StatusCode.NOT_FOUND, "ENOENT"),
        (pb.RegValue(vcpu_index=7, reg_id=TIMER_CTL, value=1), grpc.StatusCode.NOT_FOUND, None),
        # TIMER_OFFSET without the opt-in capability.
        (pb.RegValue(vcpu_index=0, reg_id=TIMER_OFFSET, value=1), grpc.StatusCode.NOT_FOUND, "ENOENT"),
    ],
    ids=["bad-id", "u32-size", "unknown-vcpu", "timer-offset"],
)
async def test_set_regs_all_or_nothing(
    vm2: InProcessNode, bad: pb.RegValue, code: grpc.StatusCode, errno: str | None
) -> None:
    before = await observable_state(vm2.stub, "vm", (0, 1))
    good = [
        pb.RegValue(vcpu_index=0, reg_id=TIMER_CNT, value=1),
        pb.RegValue(vcpu_index=1, reg_id=PTIMER_CNT, value=1),
        pb.RegValue(vcpu_index=0, reg_id=TIMER_CTL, value=0x2),
        pb.RegValue(vcpu_index=1, reg_id=TIMER_CVAL, value=77),
    ]
    err = await expect_error(
        vm2.stub.SetRegs(pb.SetRegsRequest(vm_id="vm", regs=[*good, bad, good[0]])), code, errno
    )
    assert "entry 4" in (err.details() or "")
    assert await observable_state(vm2.stub, "vm", (0, 1)) == before


@pytest.mark.asyncio
@pytest.mark.parametrize("profile", [ApiProfile.BY_VALUE, ApiProfile.VCPU_OFFSETS], ids=lambda p: p.name)
async def test_set_regs_ptimer_entry_before_6_4_is_enoent_and_applies_nothing(profile: ApiProfile) -> None:
    async with in_process_node(HostFeatures(api_profile=profile)) as n:
        await create_vm(n.stub, "vm")
        await create_vcpu(n.stub, "vm", 0)
        await step_to(n.stub, 100)
        before = await observable_state(n.stub, "vm", (0,))
        await expect_error(
            n.stub.SetRegs(
                pb.SetRegsRequest(
                    vm_id="vm",
                    regs=[
                        pb.RegValue(vcpu_index=0, reg_id=TIMER_CNT, value=5),
                        pb.RegValue(vcpu_index=0, reg_id=PTIMER_CNT, value=5),
                    ],
                )
            ),
            grpc.StatusCode.NOT_FOUND,
            "ENOENT",
        )
        assert await observable_state(n.stub, "vm", (0,)) == before
        assert await get_reg(n.stub, "vm", 0, TIMER_CNT) == 100


@pytest.mark.asyncio
async def test_get_regs_bad_entry_fails_whole_batch(vm2: InProcessNode) -> None:
    await expect_error(
        vm2.stub.GetRegs(
            pb.GetRegsRequest(
                vm_id="vm",
                regs=[
                    pb.RegValue(vcpu_index=0, reg_id=TIMER_CNT),
                    pb.RegValue(vcpu_index=0, reg_id=NOT_A_REG),
                ],
            )
        ),
        grpc.StatusCode.NOT_FOUND,
        "ENOENT",
    )
    await expect_error(
        vm2.stub.GetRegs(
            pb.GetRegsRequest(
                vm_id="vm",
                regs=[pb.RegValue(vcpu_index=0, reg_id=TIMER_CNT), pb.RegValue(vcpu_index=0, reg_id=0)],
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "EINVAL",
    )
    await expect_error(
        vm2.stub.GetRegs(pb.GetRegsRequest(vm_id="vm", regs=[pb.RegValue(vcpu_index=2, reg_id=TIMER_CNT)])),
        grpc.StatusCode.NOT_FOUND,
        None,
    )


@pytest.mark.asyncio
async def test_host_info_counts_vms_and_vcpus(vm2: InProcessNode) -> None:
    await create_vm(vm2.stub, "other")
    info: pb.HostInfo = await vm2.stub.GetHostInfo(pb.GetHostInfoRequest())
    assert (info.vm_count, info.vcpu_count, info.host_counter) == (2, 2, 5000)
    assert await host_counter(vm2.stub) == 5000


@pytest.mark.asyncio
async def test_owner_label_round_trips_through_create_and_list(node: InProcessNode) -> None:
    owner = pb.VmOwner(guest_id="guest-4", migration_id="mig-9", generation=3)
    await node.stub.CreateVm(pb.CreateVmRequest(vm_id="guest-4.g3", owner=owner))
    await node.stub.Batch(
        pb.BatchRequest(
            calls=[
                pb.BatchCall(create_vm=pb.CreateVmRequest(vm_id="b", owner=pb.VmOwner(guest_id="guest-5")))
            ]
        )
    )
    assert (await vm_summary(node.stub, "guest-4.g3")).owner == owner
    assert (await vm_summary(node.stub, "b")).owner == pb.VmOwner(guest_id="guest-5")
    await expect_error(
        node.stub.CreateVm(pb.CreateVmRequest(vm_id="c", owner=pb.VmOwner(guest_id="\x00"))),
        grpc.StatusCode.INVALID_ARGUMENT,
        None,
    )
    listed: pb.ListVmsResponse = await node.stub.ListVms(pb.ListVmsRequest())
    assert sorted(vm.vm_id for vm in listed.vms) == ["b", "guest-4.g3"]
