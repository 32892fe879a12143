"""Live migration through real in-process node servers with one simulated clock.

Edge cases covered:
- every source x destination kind (ECV nVHE, ECV VHE, non-ECV) x every method the destination supports;
- the guest counter error is exactly 0 ticks for offset methods and exactly minus the paused time for
  BY_VALUE (the naive by-value restore stalls guest time);
- timers keep firing after the move (received == expected), the virtual counter never steps back;
- trap accounting: non-ECV (or nVHE) destinations trap CNTPCT once the physical offset is non-zero,
  VHE+ECV2 destinations carry it in CNTPOFF_EL2;
- guests whose counters differ (CNTVCT != CNTPCT) still move exactly to a 6.4+ destination.
"""

from __future__ import annotations

import pytest

from controller.core.migration import Method, Phase
from node.core.features import ApiProfile, EcvLevel, HostFeatures
from node.core.workload import WorkloadSpec
from tests.support.cluster import CNTFRQ, sim_cluster

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


@pytest.mark.asyncio
@pytest.mark.parametrize("method", list(METHOD_PROFILE), ids=lambda m: m.name)
@pytest.mark.parametrize("dst_kind", list(KINDS))
@pytest.mark.parametrize("src_kind", list(KINDS))
async def test_migration_matrix(src_kind: str, dst_kind: str, method: Method) -> None:
    profile = METHOD_PROFILE[method]
    use_ptimer = profile is not ApiProfile.BY_VALUE
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
            # The destination pair was sampled before the pause (same simulated instant).
            assert record.elapsed_ticks == 0
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
        if use_ptimer:
            # Physical offset is non-zero on the destination (the hosts' counters differ).
            assert dst_vm.poffset != 0
            assert record.destination_traps_cntpct == (not dst_features.has_cntpoff)
            assert record.destination_uses_cntpoff == dst_features.has_cntpoff


@pytest.mark.asyncio
async def test_offsets_are_idempotent_and_match_the_spec_worked_example() -> None:
    """Spec case 36: the destination offset depends only on the record, not on when it is applied."""
    from controller.core.migration import SourceSnapshot, compute_destination_offsets

    t = 1_700_000_000 * 10**9
    snap = SourceSnapshot(
        cntvct=4_000_000_000,
        cntpct=4_000_000_000,
        host_counter=5_000_000_000,
        realtime_ns=t,
        cntfrq_hz=CNTFRQ,
    )
    first = compute_destination_offsets(snap, 90_000_000_000, t + 2_500_000_000)
    again = compute_destination_offsets(snap, 90_012_500_000, t + 3_000_000_000)
    assert first.voffset == first.poffset == 85_937_500_000
    assert (again.voffset, again.poffset) == (first.voffset, first.poffset)
    assert first.cntvct == 4_062_500_000
    # Spec case 39: destination realtime 0.2 s behind -> 2.3 s credited; negative -> clamped to 0.
    skewed = compute_destination_offsets(snap, 90_000_000_000, t + 2_300_000_000)
    assert skewed.elapsed_ticks == 57_500_000
    backwards = compute_destination_offsets(snap, 90_000_000_000, t - 1)
    assert backwards.elapsed_ticks == 0 and backwards.cntvct == 4_000_000_000
    # A destination pair sampled 1 s before the source's gives the same offsets, as long as
    # the destination's clock has passed the source's sample by the time they are applied.
    early = compute_destination_offsets(
        snap,
        90_000_000_000 - 75_000_000,
        t - 500_000_000,
        now_realtime_ns=t + 2_500_000_000,
    )
    assert (early.voffset, early.poffset) == (first.voffset, first.poffset)
    # If it has not (skew), the guest reads its saved counter at the apply instant: never less.
    skew = compute_destination_offsets(
        snap, 90_000_000_000, t - 1_000_000_000, now_realtime_ns=t - 400_000_000
    )
    guest_at_apply = (90_000_000_000 + 600_000_000 * CNTFRQ // 10**9) - skew.voffset
    assert guest_at_apply == 4_000_000_000


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
