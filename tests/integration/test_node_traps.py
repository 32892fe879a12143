"""Trap policy over gRPC: RunVcpu `trapped` flags, trap counts and CNTHCTL_EL2 (spec cases 32-35).

Every (ECV 0/1/2) x (VHE on/off) host runs the same guest program with poffset 0
and with poffset 0x100 (set by a PTIMER_CNT write at H=0x1000). The values the
guest reads must be identical on all hosts; only which accesses trapped, the trap
count and CNTHCTL_EL2 differ:
- VHE + ECV>=2: CNTPOFF_EL2 carries the offset, nothing traps, CNTHCTL_EL2.ECV set (32).
- VHE + ECV<2: no traps at poffset 0; CNTPCT and CNTP_* trap at poffset != 0 (33).
- nVHE: CNTP_* always trap; CNTPCT traps iff poffset != 0 (34).
- CNTVCT_EL0 and CNTV_* never trap (35). CNTVCTSS/CNTPCTSS are UNDEFINED without ECV.
"""

from __future__ import annotations

import pytest
from kvmtimer.v1 import node_pb2 as pb

from node.core.features import EcvLevel, HostFeatures
from tests.integration.node_helpers import (
    CNTHCTL_ECV,
    CNTHCTL_EL1PCEN,
    CNTHCTL_EL1PCTEN,
    PTIMER_CNT,
    VHE_SHIFT,
    create_vcpu,
    create_vm,
    read,
    run,
    set_reg,
    step_to,
    vcpu_state,
    write,
)
from tests.support.nodes import in_process_node

HOSTS = [(ecv, vhe) for ecv in (0, 1, 2) for vhe in (False, True)]


def expected_traps(ecv: int, vhe: bool, poffset: int) -> tuple[bool, bool, bool, int]:
    """(trap CNTPCT, trap CNTP_*, uses CNTPOFF, CNTHCTL_EL2), written out from spec §3.3."""
    if vhe and ecv >= 2:
        return False, False, True, ((CNTHCTL_EL1PCTEN | CNTHCTL_EL1PCEN) << VHE_SHIFT) | CNTHCTL_ECV
    if vhe:
        if poffset == 0:
            return False, False, False, (CNTHCTL_EL1PCTEN | CNTHCTL_EL1PCEN) << VHE_SHIFT
        return True, True, False, 0
    if poffset == 0:
        return False, True, False, CNTHCTL_EL1PCTEN
    return True, True, False, 0


def guest_program() -> list[pb.GuestOp]:
    return [
        read(pb.SYS_REG_CNTPCT_EL0),
        read(pb.SYS_REG_CNTVCT_EL0),
        read(pb.SYS_REG_CNTFRQ_EL0),
        write(pb.SYS_REG_CNTP_CVAL_EL0, 0x1000),
        read(pb.SYS_REG_CNTP_TVAL_EL0),
        write(pb.SYS_REG_CNTP_CTL_EL0, 0x1),
        read(pb.SYS_REG_CNTP_CTL_EL0),
        write(pb.SYS_REG_CNTV_TVAL_EL0, 0x20),
        read(pb.SYS_REG_CNTV_CVAL_EL0),
        read(pb.SYS_REG_CNTV_CTL_EL0),
        read(pb.SYS_REG_CNTPCTSS_EL0),
        read(pb.SYS_REG_CNTVCTSS_EL0),
        write(pb.SYS_REG_CNTVCT_EL0, 5),  # counters are read-only: UNDEFINED
    ]


# Per op: is it a CNTPCT access, a CNTP_* access, or neither (CNTV_*, CNTVCT, CNTFRQ)?
KIND = [
    "pct",
    "vct",
    "frq",
    "ptimer",
    "ptimer",
    "ptimer",
    "ptimer",
    "vtimer",
    "vtimer",
    "vtimer",
    "pct",
    "vct",
    "-",
]


def expected_values(poffset: int, ecv: int) -> list[tuple[int, bool]]:
    """(value, undefined) per op at H = 0x1000 with voffset = 0x800."""
    pct = 0x1000 - poffset
    ss = ecv >= 1
    return [
        (pct, False),
        (0x800, False),
        (25_000_000, False),
        (0x1000, False),
        ((0x1000 - pct) & 0xFFFFFFFF, False),  # TVAL = CVAL - now
        (0x1, False),
        (0x1 | (0x4 if pct >= 0x1000 else 0), False),
        (0x20, False),
        (0x820, False),
        (0x0, False),
        (pct if ss else 0, not ss),
        (0x800 if ss else 0, not ss),
        (5, True),
    ]


@pytest.mark.asyncio
@pytest.mark.parametrize(("ecv", "vhe"), HOSTS, ids=[f"ecv{e}-{'vhe' if v else 'nvhe'}" for e, v in HOSTS])
@pytest.mark.parametrize("poffset", [0, 0x100], ids=["poffset0", "poffset0x100"])
async def test_guest_values_identical_only_traps_differ(ecv: int, vhe: bool, poffset: int) -> None:
    async with in_process_node(HostFeatures(ecv=EcvLevel(ecv), vhe=vhe)) as n:
        await create_vm(n.stub, "vm")
        await step_to(n.stub, 0x800)
        await create_vcpu(n.stub, "vm", 0)  # voffset = 0x800
        await step_to(n.stub, 0x1000)
        await set_reg(n.stub, "vm", 0, PTIMER_CNT, 0x1000 - poffset)

        trap_pct, trap_ptimer, cntpoff, cnthctl = expected_traps(ecv, vhe, poffset)
        state = await vcpu_state(n.stub, "vm", 0)
        assert (state.voffset, state.poffset) == (0x800, poffset)
        assert (state.traps_cntpct, state.traps_ptimer, state.uses_cntpoff, state.cnthctl_el2) == (
            trap_pct,
            trap_ptimer,
            cntpoff,
            cnthctl,
        )
        direct = {t.timer: t.direct for t in state.timers}
        assert direct == {pb.TIMER_ID_VTIMER: True, pb.TIMER_ID_PTIMER: not trap_ptimer}

        result = await run(n.stub, "vm", 0, *guest_program())
        assert [(r.value, r.undefined) for r in result.results] == expected_values(poffset, ecv)
        trap_of = {
            "pct": trap_pct,
            "ptimer": trap_ptimer,
            "vct": False,
            "vtimer": False,
            "frq": False,
            "-": False,
        }
        expected_trapped = [
            trap_of[kind] and not undefined
            for kind, (_, undefined) in zip(KIND, expected_values(poffset, ecv), strict=True)
        ]
        assert [r.trapped for r in result.results] == expected_trapped
        assert result.trap_count == sum(expected_trapped)
        assert (await vcpu_state(n.stub, "vm", 0)).trap_count == sum(expected_trapped)

        # Trap counts accumulate across runs; nothing else about the guest changes.
        again = await run(n.stub, "vm", 0, read(pb.SYS_REG_CNTPCT_EL0), read(pb.SYS_REG_CNTVCT_EL0))
        assert [(r.value, r.trapped) for r in again.results] == [(0x1000 - poffset, trap_pct), (0x800, False)]
        assert again.trap_count == sum(expected_trapped) + int(trap_pct)


@pytest.mark.asyncio
async def test_case32_vhe_ecv2_uses_cntpoff_without_traps() -> None:
    async with in_process_node(HostFeatures(ecv=EcvLevel.CNTPOFF, vhe=True)) as n:
        await create_vm(n.stub, "vm")
        await create_vcpu(n.stub, "vm", 0)
        await step_to(n.stub, 0x1000)
        await set_reg(n.stub, "vm", 0, PTIMER_CNT, 0xF00)  # poffset 0x100
        result = await run(n.stub, "vm", 0, read(pb.SYS_REG_CNTPCT_EL0))
        assert (result.results[0].value, result.results[0].trapped, result.trap_count) == (0xF00, False, 0)
        state = await vcpu_state(n.stub, "vm", 0)
        assert state.cnthctl_el2 & CNTHCTL_ECV == CNTHCTL_ECV
        assert (state.uses_cntpoff, state.traps_cntpct, state.traps_ptimer) == (True, False, False)


@pytest.mark.asyncio
async def test_trap_policy_follows_poffset_changes() -> None:
    """VHE without CNTPOFF: traps switch on when poffset leaves 0 and off when it returns."""
    async with in_process_node(HostFeatures(ecv=EcvLevel.IMP, vhe=True)) as n:
        await create_vm(n.stub, "vm")
        await create_vcpu(n.stub, "vm", 0)
        await step_to(n.stub, 500)
        await set_reg(n.stub, "vm", 0, PTIMER_CNT, 400)
        assert (await vcpu_state(n.stub, "vm", 0)).traps_cntpct is True
        await set_reg(n.stub, "vm", 0, PTIMER_CNT, 500)
        state = await vcpu_state(n.stub, "vm", 0)
        assert (state.poffset, state.traps_cntpct, state.traps_ptimer) == (0, False, False)
        # The VM-wide counter offset ioctl sets poffset too.
        await n.stub.SetCounterOffset(pb.SetCounterOffsetRequest(vm_id="vm", counter_offset=1))
        result = await run(n.stub, "vm", 0, read(pb.SYS_REG_CNTPCT_EL0), read(pb.SYS_REG_CNTP_CTL_EL0))
        assert [(r.value, r.trapped) for r in result.results] == [(499, True), (0x4, True)]
