"""Live migration through real in-process node servers with one simulated clock.

Edge cases covered:
- every source kernel x destination kernel x method the destination supports, for a guest with
  and without a physical timer: what the two GetRegLists let the controller carry, checked on the
  guest's own numbers (virtual and physical counter jump over the stop, interrupts received):
  offset methods 0 ticks, BY_VALUE minus the paused time, a physical counter the destination
  cannot set jumps by the hosts' counter difference; a ptimer guest that would lose its timer
  is refused by default (FailedPrecondition naming the kernel and side, nothing changed) and,
  with allow_state_loss, moves with `not_carried` listing the loss and its ptimer interrupts stop;
- AUTO picks a destination that keeps a ptimer guest's timer; refuses when none can;
- every source x destination kind (ECV nVHE, ECV VHE, non-ECV) x every method the destination supports;
- the guest counter error is exactly 0 ticks for offset methods and exactly minus the paused time for
  BY_VALUE (the naive by-value restore stalls guest time);
- timers keep firing after the move (received == expected), the virtual counter never steps back;
- trap accounting: non-ECV (or nVHE) destinations trap CNTPCT once the physical offset is non-zero,
  VHE+ECV2 destinations carry it in CNTPOFF_EL2;
- guests whose counters differ (CNTVCT != CNTPCT) still move exactly to a 6.4+ destination.
"""

from __future__ import annotations

import itertools

import pytest

from controller.core.errors import FailedPrecondition
from controller.core.migration import Method, Phase
from node.core.features import ApiProfile, EcvLevel, HostFeatures
from node.core.timer import TimerId
from node.core.vm import Vm
from node.core.workload import SampleCause, WorkloadSpec, signed64
from tests.support.cluster import CNTFRQ, DAY_TICKS, SimCluster, sim_cluster

KINDS = {
    "ecv-nvhe": dict(ecv=EcvLevel.CNTPOFF, vhe=False),
    "ecv-vhe": dict(ecv=EcvLevel.CNTPOFF, vhe=True),
    "noecv": dict(ecv=EcvLevel.NI, vhe=True),
}
METHOD_PROFILE = {
    Method.BY_VALUE: ApiProfile.BY_VALUE,
    Method.VCPU_OFFSETS: ApiProfile.VCPU_OFFSETS,
    Method.VM_COUNTER_OFFSET: ApiProfile.VM_COUNTER_OFFSET,
}
PERIOD = CNTFRQ // 100  # 10 ms guest timer
PAUSED_S = 0.5  # simulated state-transfer time while the guest is stopped


def features(kind: str, profile: ApiProfile) -> HostFeatures:
    return HostFeatures(api_profile=profile, **KINDS[kind])  # type: ignore[arg-type]


# Methods each destination kernel can apply.
DST_METHODS = {
    ApiProfile.BY_VALUE: [Method.BY_VALUE],
    ApiProfile.VCPU_OFFSETS: [Method.VCPU_OFFSETS, Method.BY_VALUE],
    ApiProfile.VM_COUNTER_OFFSET: [Method.VM_COUNTER_OFFSET, Method.BY_VALUE],
}
KIND_PAIRS = itertools.cycle(itertools.product(KINDS, KINDS))
COMBOS = [
    pytest.param(src, dst, method, *next(KIND_PAIRS), id=f"{src.name}-{dst.name}-{method.name}")
    for src in ApiProfile
    for dst in ApiProfile
    for method in DST_METHODS[dst]
]
SIX_4 = ApiProfile.VM_COUNTER_OFFSET


def stop_jumps(vm: Vm, cntfrq_hz: int) -> tuple[int, int]:
    """(virtual, physical) counter jump minus real time over the last stop, from vCPU 0's own readings."""
    assert vm.workload is not None
    samples = list(vm.workload.vcpus[0].samples)
    pause = [x for x in samples if x.cause is SampleCause.PAUSE][-1]
    resume = [x for x in samples if x.cause is SampleCause.RESUME][-1]
    ideal = (resume.realtime_ns - pause.realtime_ns) * cntfrq_hz // 10**9
    return signed64(resume.cntvct - pause.cntvct) - ideal, signed64(resume.cntpct - pause.cntpct) - ideal


async def start(sim: SimCluster, use_ptimer: bool) -> tuple[Vm, int]:
    """The guest on "src" after 1 s; returns its source VM and the physical interrupts taken so far."""
    await sim.cluster.create_guest("g", 2, WorkloadSpec(PERIOD, use_ptimer=use_ptimer), "src")
    sim.advance_s(1.0)
    src_vm = sim.nodes["src"].host.vm(sim.cluster.guest("g").vm_id)
    assert src_vm.workload is not None
    ptimer = src_vm.workload.vcpus[0].ptimer
    return src_vm, 0 if ptimer is None else ptimer.received


@pytest.mark.asyncio
@pytest.mark.parametrize("use_ptimer", [False, True], ids=["vtimer", "ptimer"])
@pytest.mark.parametrize(("src", "dst", "method", "src_kind", "dst_kind"), COMBOS)
async def test_kernel_pair_matrix(
    src: ApiProfile, dst: ApiProfile, method: Method, src_kind: str, dst_kind: str, use_ptimer: bool
) -> None:
    ptimer_kept = src is SIX_4 and dst is SIX_4
    allow = use_ptimer and not ptimer_kept
    async with sim_cluster([("src", features(src_kind, src)), ("dst", features(dst_kind, dst))]) as sim:
        sim.transfer_delay_ns = int(PAUSED_S * 1e9)
        src_vm, ptimer_before = await start(sim, use_ptimer)
        src_poffset = src_vm.poffset
        record = await sim.cluster.migrate("g", "dst", method, wait=True, allow_state_loss=allow)
        assert record.phase is Phase.SUCCEEDED, record.reason
        assert (record.guest_uses_ptimer, record.allow_state_loss) == (use_ptimer, allow)
        # What the two kernels' register lists allow (spec §2.1), by name.
        lost = set()
        if (src is SIX_4) != (dst is SIX_4) or (use_ptimer and not ptimer_kept):
            lost |= {"PTIMER_CTL", "PTIMER_CVAL"}
        physical_carried = method is not Method.BY_VALUE or dst is SIX_4
        if not physical_carried:
            lost.add("PTIMER_CNT")
        assert set(record.not_carried) == lost
        dst_vm = sim.nodes["dst"].host.vm("g@" + record.migration_id)
        v_err, p_err = stop_jumps(dst_vm, CNTFRQ)
        paused_ticks = int(PAUSED_S * CNTFRQ)
        expected_err = -paused_ticks if method is Method.BY_VALUE else 0
        assert v_err == expected_err == record.counter_error_ticks
        if physical_carried:
            assert p_err == expected_err
        else:
            # CNTPCT = H on the destination: it jumps by the hosts' counter difference (7 days)
            # plus the source's physical offset, less nothing: the guest sees it.
            assert p_err == 7 * DAY_TICKS + src_poffset
        sim.advance_s(1.0)
        obs = await sim.cluster.observations(sim.cluster.guest("g"))
        for v in obs.vcpus:
            assert v.vtimer_received == v.vtimer_expected
        ptimer_ctl = dst_vm.vcpu(0).timer(TimerId.PTIMER).ctl
        if not use_ptimer:
            return
        w = dst_vm.workload
        assert w is not None and w.vcpus[0].ptimer is not None
        if ptimer_kept:
            assert ptimer_ctl == 1
            for v in obs.vcpus:
                assert v.ptimer_received == v.ptimer_expected > ptimer_before
        else:
            # Not carried: the destination's physical timer is off, its interrupts stopped
            # at the pause; the guest's own count shows it.
            assert ptimer_ctl == 0
            assert w.vcpus[0].ptimer.received == ptimer_before
            assert obs.vcpus[0].ptimer_received == ptimer_before < obs.vcpus[0].ptimer_expected


LOSSY = [
    pytest.param(src, dst, method, id=f"{src.name}-{dst.name}-{method.name}")
    for src in ApiProfile
    for dst in ApiProfile
    for method in DST_METHODS[dst]
    if not (src is SIX_4 and dst is SIX_4)
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("src", "dst", "method"), LOSSY)
async def test_ptimer_guest_refused_where_its_timer_cannot_move(
    src: ApiProfile, dst: ApiProfile, method: Method
) -> None:
    async with sim_cluster([("src", features("noecv", src)), ("dst", features("ecv-vhe", dst))]) as sim:
        src_vm, _ = await start(sim, use_ptimer=True)
        before = (src_vm.snapshot(), src_vm.running)
        with pytest.raises(FailedPrecondition) as exc_info:
            await sim.cluster.migrate("g", "dst", method, wait=True)
        message = exc_info.value.message
        assert "physical timer" in message and "allow_state_loss" in message
        if src is not SIX_4:
            assert f"source src runs a {src.name}" in message
        if dst is not SIX_4:
            assert f"destination dst runs a {dst.name}" in message
        # Nothing changed: no destination VM, the source never paused, no record.
        assert sim.nodes["dst"].host.vms == {}
        assert (src_vm.snapshot(), src_vm.running) == before
        assert sim.cluster.migrations == {}
        assert sim.cluster.guest("g").node_id == "src"


@pytest.mark.asyncio
async def test_auto_keeps_a_ptimer_guests_timer_or_refuses() -> None:
    six_4 = features("ecv-vhe", SIX_4)
    old = features("noecv", ApiProfile.BY_VALUE)
    async with sim_cluster([("src", six_4), ("a-old", old), ("z-new", six_4)]) as sim:
        await start(sim, use_ptimer=True)
        record = await sim.cluster.migrate("g", "", Method.AUTO, wait=True)
        assert (record.phase, record.destination, record.method) == (
            Phase.SUCCEEDED,
            "z-new",
            Method.VM_COUNTER_OFFSET,
        )
        assert record.not_carried == []
    async with sim_cluster([("src", six_4), ("a-old", old)]) as sim:
        await start(sim, use_ptimer=True)
        with pytest.raises(FailedPrecondition):
            await sim.cluster.migrate("g", "", Method.AUTO, wait=True)
        record = await sim.cluster.migrate("g", "", Method.AUTO, wait=True, allow_state_loss=True)
        assert (record.phase, record.destination, record.method) == (
            Phase.SUCCEEDED,
            "a-old",
            Method.BY_VALUE,
        )
        assert record.not_carried == ["PTIMER_CTL", "PTIMER_CVAL", "PTIMER_CNT"]


@pytest.mark.asyncio
@pytest.mark.parametrize("method", list(METHOD_PROFILE), ids=lambda m: m.name)
@pytest.mark.parametrize("dst_kind", list(KINDS))
@pytest.mark.parametrize("src_kind", list(KINDS))
async def test_migration_matrix(src_kind: str, dst_kind: str, method: Method) -> None:
    profile = METHOD_PROFILE[method]
    # Only 6.4 kernels carry the physical timer (spec §2.1).
    use_ptimer = profile is ApiProfile.VM_COUNTER_OFFSET
    async with sim_cluster(
        [("src", features(src_kind, profile)), ("dst", features(dst_kind, profile))]
    ) as sim:
        sim.transfer_delay_ns = int(PAUSED_S * 1e9)
        guest = await sim.cluster.create_guest("g", 2, WorkloadSpec(PERIOD, use_ptimer=use_ptimer), "src")
        sim.advance_s(1.0)
        record = await sim.cluster.migrate("g", "dst", method, wait=True)

        assert record.phase is Phase.SUCCEEDED, record.reason
        assert record.method is method
        assert guest.node_id == "dst"
        paused_ticks = int(PAUSED_S * CNTFRQ)
        if method is Method.BY_VALUE:
            # Guest time stalled for exactly the time it was stopped.
            assert record.counter_error_ticks == -paused_ticks
        else:
            assert record.counter_error_ticks == 0
            # The destination credited exactly the time the guest was stopped.
            assert record.elapsed_ticks == paused_ticks
        # The source VM is gone; the guest runs on the destination only.
        assert [vm for vm in sim.nodes["src"].host.vms] == []
        dst_vm = sim.nodes["dst"].host.vm(guest.vm_id)
        assert dst_vm.running

        sim.advance_s(1.0)
        obs = await sim.cluster.observations(guest)
        assert len(obs.vcpus) == 2
        for v in obs.vcpus:
            assert v.min_step_v >= 0
            assert v.vtimer_received == v.vtimer_expected
            assert v.vtimer_received >= 2 * CNTFRQ // PERIOD - 1 - (
                paused_ticks // PERIOD if method is Method.BY_VALUE else 0
            )
            if use_ptimer:
                assert v.min_step_p >= 0
                assert v.ptimer_received == v.ptimer_expected > 0
        dst_features = sim.nodes["dst"].host.features
        if profile is not ApiProfile.BY_VALUE:
            # Physical offset is non-zero on the destination (the hosts' counters differ).
            assert dst_vm.poffset != 0
            assert record.destination_traps_cntpct == (not dst_features.has_cntpoff)
            assert record.destination_uses_cntpoff == dst_features.has_cntpoff


@pytest.mark.asyncio
@pytest.mark.parametrize("src_profile", list(ApiProfile), ids=lambda p: p.name)
async def test_guest_from_any_kernel_moves_exactly_to_a_6_4_host(src_profile: ApiProfile) -> None:
    async with sim_cluster(
        [("src", features("noecv", src_profile)), ("dst", features("ecv-vhe", ApiProfile.VM_COUNTER_OFFSET))]
    ) as sim:
        sim.transfer_delay_ns = 40_000_000
        guest = await sim.cluster.create_guest("g", 1, WorkloadSpec(PERIOD), "src")
        sim.advance_s(0.3)
        record = await sim.cluster.migrate("g", "", Method.AUTO, wait=True)
        assert record.phase is Phase.SUCCEEDED, record.reason
        assert record.method is Method.VM_COUNTER_OFFSET
        assert record.counter_error_ticks == 0
        # A 6.4 source started the guest with one VM-wide offset: the ioctl reproduces it;
        # other kernels left CNTVCT != CNTPCT, which the ioctl cannot express.
        if src_profile is ApiProfile.VM_COUNTER_OFFSET:
            assert record.applied_as == "KVM_ARM_SET_COUNTER_OFFSET"
        else:
            assert record.applied_as.startswith("TIMER_CNT+PTIMER_CNT")
        vm = sim.nodes["dst"].host.vm(guest.vm_id)
        assert (vm.voffset, vm.poffset) == (record.destination_voffset, record.destination_poffset)
