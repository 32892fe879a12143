"""Controller migrations and the destination's own clock (issue: clamp, downtime, elapsed_ticks).

Edge cases covered:
- destination realtime behind the source's (deliberate skew): the guest is credited 0 at the
  destination's apply instant and its counter never goes backwards, however slow the
  controller is (the controller's wall clock is not used to estimate the destination's)
- the same skewed move records a downtime that is never negative; downtime is the guest's own
  stop within [0, a one-clock bound] (the source's counter, else the controller's monotonic clock)
- elapsed_ticks is what the destination credited: exactly the simulated transfer time
- destination realtime ahead (skew): the guest error equals the skew in ticks exactly, and the
  record's elapsed_ticks includes it
- every method, every offset profile; BY_VALUE credits nothing
- the record carries the skew between the nodes (realtime_skew_ns); kvmtimer report labels
  each offset-method jump with it
"""

from __future__ import annotations

import pytest

from controller.core.migration import Method, MigrationRecord, Phase
from controller.core.model import GuestId, MigrationId, NodeId
from controller.service import convert
from controller.telemetry.report import METHOD_SHORT, Mark, jump_label
from node.core.clock import NS_PER_S
from node.core.features import ApiProfile, HostFeatures
from node.core.workload import WorkloadSpec
from tests.support.cluster import CNTFRQ, sim_cluster

PERIOD = CNTFRQ // 100
OFFSET_METHODS = [
    (Method.VM_COUNTER_OFFSET, ApiProfile.VM_COUNTER_OFFSET),
    (Method.VCPU_OFFSETS, ApiProfile.VCPU_OFFSETS),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("method", "profile"), OFFSET_METHODS)
async def test_destination_behind_credits_zero_and_never_goes_backwards(
    method: Method, profile: ApiProfile
) -> None:
    specs = [("src", HostFeatures(api_profile=profile)), ("dst", HostFeatures(api_profile=profile))]
    async with sim_cluster(specs) as sim:
        sim.nodes["dst"].host.change_clock_effects(skew_ns=-10 * NS_PER_S)
        await sim.cluster.create_guest("g", 2, WorkloadSpec(PERIOD), "src")
        sim.advance_s(1.0)
        record = await sim.cluster.migrate("g", "dst", method, wait=True)
        assert record.phase is Phase.SUCCEEDED, record.reason
        # Simulated time stood still over the move and nothing was credited: no error at all.
        assert (record.elapsed_ticks, record.counter_error_ticks) == (0, 0)
        vm = sim.nodes["dst"].host.vm(sim.cluster.guest("g").vm_id)
        assert vm.workload is not None
        assert all(w.min_step_v is None or w.min_step_v >= 0 for w in vm.workload.vcpus.values())


@pytest.mark.asyncio
@pytest.mark.parametrize("method", [Method.VM_COUNTER_OFFSET, Method.BY_VALUE])
async def test_downtime_is_never_negative_with_a_skewed_destination(method: Method) -> None:
    specs = [("src", HostFeatures()), ("dst", HostFeatures())]
    async with sim_cluster(specs) as sim:
        sim.nodes["dst"].host.change_clock_effects(skew_ns=-10 * NS_PER_S)
        await sim.cluster.create_guest("g", 1, WorkloadSpec(PERIOD), "src")
        record = await sim.cluster.migrate("g", "dst", method, wait=True)
        assert record.phase is Phase.SUCCEEDED, record.reason
        assert record.downtime_us() >= 0
        assert convert.migration_to_pb(record).downtime >= 0


@pytest.mark.asyncio
@pytest.mark.parametrize(("method", "profile"), OFFSET_METHODS)
async def test_elapsed_ticks_is_what_the_destination_credited(method: Method, profile: ApiProfile) -> None:
    specs = [("src", HostFeatures(api_profile=profile)), ("dst", HostFeatures(api_profile=profile))]
    async with sim_cluster(specs) as sim:
        await sim.cluster.create_guest("g", 2, WorkloadSpec(PERIOD), "src")
        sim.advance_s(0.3)
        sim.transfer_delay_ns = 2 * NS_PER_S
        record = await sim.cluster.migrate("g", "dst", method, wait=True)
        assert record.phase is Phase.SUCCEEDED, record.reason
        assert (record.elapsed_ticks, record.counter_error_ticks) == (2 * CNTFRQ, 0)
        assert convert.migration_to_pb(record).elapsed_ticks == 2 * CNTFRQ


@pytest.mark.asyncio
@pytest.mark.parametrize(("method", "profile"), OFFSET_METHODS)
@pytest.mark.parametrize("skew_ns", [40, 200_000_000, -120_000_000])
async def test_error_equals_the_skew_between_the_nodes(
    method: Method, profile: ApiProfile, skew_ns: int
) -> None:
    specs = [("src", HostFeatures(api_profile=profile)), ("dst", HostFeatures(api_profile=profile))]
    async with sim_cluster(specs) as sim:
        sim.nodes["src"].host.change_clock_effects(skew_ns=50_000_000)
        sim.nodes["dst"].host.change_clock_effects(skew_ns=50_000_000 + skew_ns)
        await sim.cluster.create_guest("g", 1, WorkloadSpec(PERIOD), "src")
        sim.transfer_delay_ns = NS_PER_S
        record = await sim.cluster.migrate("g", "dst", method, wait=True)
        assert record.phase is Phase.SUCCEEDED, record.reason
        skew_ticks = skew_ns * CNTFRQ // NS_PER_S
        assert record.counter_error_ticks == skew_ticks
        assert record.elapsed_ticks == CNTFRQ + skew_ticks
        assert record.realtime_skew_ns == convert.migration_to_pb(record).realtime_skew_ns == skew_ns
        # kvmtimer report puts the skew next to the jump.
        mark = Mark(record.migration_id, "g", int(method), 0, skew_ticks, CNTFRQ, skew_ticks)
        assert (
            jump_label(mark, "ticks") == f"{METHOD_SHORT[int(method)]} {skew_ticks:+d} (skew {skew_ticks:+d})"
        )


@pytest.mark.asyncio
async def test_by_value_credits_nothing() -> None:
    async with sim_cluster([("src", HostFeatures()), ("dst", HostFeatures())]) as sim:
        await sim.cluster.create_guest("g", 1, WorkloadSpec(PERIOD), "src")
        sim.transfer_delay_ns = NS_PER_S
        record = await sim.cluster.migrate("g", "dst", Method.BY_VALUE, wait=True)
        assert (record.elapsed_ticks, record.counter_error_ticks) == (0, -CNTFRQ)


@pytest.mark.parametrize(
    ("fields", "downtime_us"),
    [
        ({"stop_bound_ns": 9_000_000, "guest_stop_ns": 4_000_000}, 4_000),  # the guest's stop
        ({"stop_bound_ns": 9_000_000, "guest_stop_ns": -4_000_000}, 9_000),  # clocks disagree: bound
        ({"stop_bound_ns": 9_000_000, "guest_stop_ns": 12_000_000}, 9_000),  # beyond the bound
        ({"stop_bound_ns": 9_000_000}, 9_000),  # no guest reading
        ({"stop_sent_ns": 100, "resume_acked_ns": 5_000_100, "guest_stop_ns": 2_000_000}, 2_000),
        ({"stop_sent_ns": 100, "resume_acked_ns": 5_000_100}, 5_000),  # source unreadable: controller
        ({}, 0),  # never stopped
    ],
)
def test_downtime_is_one_clock_bounded_and_never_negative(fields: dict[str, int], downtime_us: int) -> None:
    record = MigrationRecord(MigrationId("m"), GuestId("g"), NodeId("a"), NodeId("b"), Method.AUTO)
    for name, value in fields.items():
        setattr(record, name, value)
    assert record.downtime_us() == downtime_us
