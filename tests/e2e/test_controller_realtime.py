"""Migrations between real node processes on the realtime clock.

Edge cases covered:
- a guest whose counters differ (created on a pre-6.4 kernel) moves to a 6.4+ host with by-value
  counter writes computed against the destination sample: error stays within scheduling noise;
- the offset ioctl and the series' controls keep the guest counter within scheduling noise too,
  while BY_VALUE loses at least the downtime.
"""

from __future__ import annotations

import pytest
from kvmtimer.v1 import controller_pb2 as cpb

from controller.core.migration import Method, Phase
from controller.core.model import GuestRecord
from controller.service import convert
from controller.service.cluster import Cluster
from node.core.workload import WorkloadSpec
from tests.support.nodes import node_process
from tests.support.wait import until

pytestmark = pytest.mark.e2e


async def timer_fired_on_every_vcpu(cluster: Cluster, guest: GuestRecord) -> bool:
    obs = await cluster.observations(guest)
    return obs.running and all(v.vtimer_received > 0 for v in obs.vcpus)


NOISE_TICKS = 25_000  # 1 ms at 25 MHz: generous for a loaded 2-core machine


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
            assert to_new.counter_error_ticks is not None and abs(to_new.counter_error_ticks) < NOISE_TICKS
            to_series = await cluster.migrate("g", "series", Method.AUTO, wait=True)
            assert to_series.method is Method.VCPU_OFFSETS
            assert (
                to_series.counter_error_ticks is not None and abs(to_series.counter_error_ticks) < NOISE_TICKS
            )
            back = await cluster.migrate("g", "old", Method.AUTO, wait=True)
            assert back.method is Method.BY_VALUE
            assert back.counter_error_ticks is not None
            # By value the guest loses the time from the pause to the restore write (the
            # counter runs again from the write, before the journaled resume): some, at most
            # the whole downtime.
            assert -(back.downtime_us() * 25) - NOISE_TICKS <= back.counter_error_ticks < 0
            for record in (to_new, to_series, back):
                # Every field fits its protobuf type (an early destination sample must not
                # leave a negative elapsed time in a uint64 field).
                msg = convert.migration_to_pb(record)
                assert msg.phase == cpb.MIGRATION_PHASE_SUCCEEDED and msg.downtime > 0
        finally:
            await cluster.stop()
