"""Migrations between real node processes on the realtime clock.

Edge cases covered:
- a guest whose counters differ (created on a pre-6.4 kernel) moves to a 6.4+ host with by-value
  counter writes at the destination's apply instant: error within 1 tick;
- the offset ioctl and the series' controls keep the guest counter within 1 tick too,
  while BY_VALUE loses the stop from read to write (within the recorded downtime).
- under artificial CPU load (busy processes on every CPU), offset-method migrations between
  realtime node processes are exact: error within 1 tick (in fact 0) at 25 MHz and 1 GHz with
  no skew, and exactly the skew between the nodes' realtimes (--realtime-skew-ns) otherwise;
  elapsed_ticks > 0 (the destination credits the stop) and the downtime is never negative.
"""

from __future__ import annotations

import pytest
from kvmtimer.v1 import controller_pb2 as cpb

from controller.core.migration import Method, Phase
from controller.core.model import GuestRecord
from controller.service import convert
from controller.service.cluster import Cluster
from node.core.clock import NS_PER_S
from node.core.workload import WorkloadSpec
from tests.support.load import busy_cpus
from tests.support.nodes import node_process
from tests.support.wait import until

pytestmark = pytest.mark.e2e


async def timer_fired_on_every_vcpu(cluster: Cluster, guest: GuestRecord) -> bool:
    obs = await cluster.observations(guest)
    return obs.running and all(v.vtimer_received > 0 for v in obs.vcpus)


@pytest.mark.asyncio
async def test_realtime_migrations_keep_guest_time() -> None:
    with (
        node_process(["--node-id", "old", "--api-profile", "BY_VALUE"]) as old,
        node_process(["--node-id", "new", "--ecv", "2", "--vhe"]) as new,
        node_process(["--node-id", "series", "--api-profile", "VCPU_OFFSETS"]) as series,
    ):
        cluster = Cluster(health_interval_s=0)
        try:
            for name, proc in (("old", old), ("new", new), ("series", series)):
                await cluster.register_node(name, proc.address)
            guest = await cluster.create_guest("g", 2, WorkloadSpec(250_000), "old")
            await until(lambda: timer_fired_on_every_vcpu(cluster, guest), what="the guest running")
            to_new = await cluster.migrate("g", "new", Method.AUTO, wait=True)
            assert to_new.phase is Phase.SUCCEEDED, to_new.reason
            assert to_new.applied_as.startswith("TIMER_CNT+PTIMER_CNT")
            assert to_new.counter_error_ticks is not None and abs(to_new.counter_error_ticks) <= 1
            to_series = await cluster.migrate("g", "series", Method.AUTO, wait=True)
            assert to_series.method is Method.VCPU_OFFSETS
            assert to_series.counter_error_ticks is not None and abs(to_series.counter_error_ticks) <= 1
            back = await cluster.migrate("g", "old", Method.AUTO, wait=True)
            assert back.method is Method.BY_VALUE
            assert back.counter_error_ticks is not None
            # By value the guest loses the time from the source's read to the destination's
            # write, which the downtime (pause -> after the resume, on the source's counter) covers.
            # (downtime_us is whole microseconds, rounded down: allow the microsecond it dropped.)
            assert -((back.downtime_us() + 1) * 25) <= back.counter_error_ticks < 0
            for record in (to_new, to_series, back):
                # Every field fits its protobuf type (an early destination sample must not
                # leave a negative elapsed time in a uint64 field).
                msg = convert.migration_to_pb(record)
                assert msg.phase == cpb.MIGRATION_PHASE_SUCCEEDED and msg.downtime > 0
        finally:
            await cluster.stop()


@pytest.mark.asyncio
@pytest.mark.parametrize("cntfrq_hz", [25_000_000, 1_000_000_000])
async def test_offset_migrations_under_load_are_exact_or_exactly_the_skew(cntfrq_hz: int) -> None:
    skew_ns = 2_000_000  # node "c" runs 2 ms ahead: a whole number of ticks at both frequencies
    freq = ["--cntfrq", str(cntfrq_hz)]
    with (
        busy_cpus(),
        node_process(["--node-id", "a", *freq]) as a,
        node_process(["--node-id", "b", "--api-profile", "VCPU_OFFSETS", *freq]) as b,
        node_process(["--node-id", "c", "--realtime-skew-ns", str(skew_ns), *freq]) as c,
    ):
        cluster = Cluster(health_interval_s=0)
        try:
            for name, proc in (("a", a), ("b", b), ("c", c)):
                await cluster.register_node(name, proc.address)
            await cluster.create_guest("g", 2, WorkloadSpec(cntfrq_hz // 1000), "a")
            skew_of = {"a": 0, "b": 0, "c": skew_ns}
            route = ["b", "a", "b", "a", "c", "a", "b", "c", "b"]
            here = "a"
            for there in route:
                record = await cluster.migrate("g", there, Method.AUTO, wait=True)
                assert record.phase is Phase.SUCCEEDED, record.reason
                assert record.method in (Method.VM_COUNTER_OFFSET, Method.VCPU_OFFSETS)
                expected = (skew_of[there] - skew_of[here]) * cntfrq_hz // NS_PER_S
                assert record.counter_error_ticks is not None
                assert abs(record.counter_error_ticks - expected) <= 1, (here, there, record)
                assert record.elapsed_ticks > 0 and record.downtime_us() >= 0
                here = there
        finally:
            await cluster.stop()
