"""A 20-host fleet (`kvmtimer fleet` processes) with 100 guests and 200 migrations, every guest checked.

Edge cases: hosts of every kernel API and ECV/VHE mix served by two processes (each host its own
endpoint and counter); guests of 1-4 vCPUs, half of them on the physical timer where it can move,
moved with allow_state_loss towards pre-6.4 kernels too; 200 migrations at up to 50 at once, no
guest moved twice at once; afterwards every guest is on exactly one host, its counters never went
backwards, and it received every interrupt it expected within the lateness it recorded itself.
"""

from __future__ import annotations

import random

import pytest

from controller.cli.up.launch import NodeProcess, spawn_fleet, stop_node
from controller.cli.up.scenario import guest_plans, node_plans
from controller.core.migration import Limits, Phase
from controller.service.cluster import Cluster
from node.core.workload import WorkloadSpec
from tests.support.fleet import check_guests, storm

pytestmark = pytest.mark.e2e

HOSTS = 20
GUESTS = 100
MIGRATIONS = 200
PERIOD_TICKS = 2_500_000  # 100 ms at 25 MHz: 100 guests stay cheap on 2 shared cores


@pytest.mark.asyncio
async def test_fleet_of_20_hosts_survives_200_migrations() -> None:
    rng = random.Random(20)
    plans = node_plans(HOSTS)
    cluster = Cluster(limits=Limits(50, 50), health_interval_s=2.0)
    procs: list[NodeProcess] = []
    try:
        procs = [await spawn_fleet(plans[:10], None), await spawn_fleet(plans[10:], None)]
        assert len({n.proc.pid for n in procs}) == 2
        for n in procs:
            for plan in n.plans:
                node = await cluster.register_node(plan.node_id, n.address_of(plan.node_id))
                assert (node.features.ecv, node.features.vhe, node.features.api_profile) == (
                    plan.ecv,
                    plan.vhe,
                    plan.api_profile,
                )
        assert len({n.address_of(p.node_id) for n in procs for p in n.plans}) == HOSTS
        cluster.start()
        for g in guest_plans(GUESTS, plans, rng):
            await cluster.create_guest(
                g.guest_id, g.vcpus, WorkloadSpec(PERIOD_TICKS, g.use_ptimer), g.node_id
            )

        _, records, _, refused = await storm(cluster, Limits(50, 50), MIGRATIONS, rng)

        assert refused == []
        assert len(records) == MIGRATIONS
        assert [r.reason for r in records if r.phase is not Phase.SUCCEEDED] == []
        assert sum(g.migrations for g in cluster.guests.values()) == MIGRATIONS
        found, lost, backwards, short = await check_guests(cluster, GUESTS)
        assert (found, lost, backwards, short) == (GUESTS, 0, 0, 0)
    finally:
        await cluster.stop()
        codes = [await stop_node(n) for n in procs]
    assert codes == [0, 0]
    assert all(n.stopped_cleanly for n in procs)
