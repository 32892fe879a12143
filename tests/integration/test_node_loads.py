"""The controller's per-node load index against the inventory, through the Cluster.

Edge cases: guests placed automatically spread by vCPUs; a migration (chosen destination and
automatic) moves its guest's load with it; a destroyed guest and a guest whose host lost it stop
counting (the lost one is listed on its node); a restarted controller counts what it loaded.
After every step the index equals the load recomputed from every guest.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.core.migration import Method, Phase
from controller.core.model import GuestState, NodeId, node_load
from controller.service.cluster import Cluster
from node.core.features import EcvLevel, HostFeatures
from node.core.workload import WorkloadSpec
from tests.support.cluster import CNTFRQ, sim_cluster

FEATURES = HostFeatures(ecv=EcvLevel.CNTPOFF, vhe=True)
WORKLOAD = WorkloadSpec(period_ticks=CNTFRQ // 100)


def assert_index_matches(c: Cluster) -> None:
    guests = list(c.guests.values())
    for n in c.nodes:
        live = [g for g in guests if g.node_id == n and g.state.alive]
        assert c.load(n) == (len(live), node_load(n, guests))
        lost = sorted(g.guest_id for g in guests if g.node_id == n and g.state is GuestState.LOST)
        assert list(c.node_status(c.nodes[n]).lost_guests) == lost


@pytest.mark.asyncio
async def test_load_index_follows_every_change(tmp_path: Path) -> None:
    nodes = [("a", FEATURES), ("b", FEATURES), ("c", FEATURES)]
    async with sim_cluster(nodes, state_path=tmp_path / "s.db") as sim:
        c = sim.cluster
        for i, vcpus in enumerate((4, 1, 1, 2)):
            await c.create_guest(f"g{i}", vcpus, WORKLOAD)
            assert_index_matches(c)
        assert [c.load(NodeId(n))[1] for n in ("a", "b", "c")] == [4, 3, 1]  # least loaded first, ties by id
        moved = await c.migrate("g0", "", Method.AUTO, wait=True)
        assert moved.phase is Phase.SUCCEEDED
        assert_index_matches(c)
        chosen = "a" if c.guest("g1").node_id != "a" else "b"
        assert (await c.migrate("g1", chosen, Method.AUTO, wait=True)).phase is Phase.SUCCEEDED
        assert_index_matches(c)
        await c.destroy_guest("g2")
        assert_index_matches(c)
        g3 = c.guest("g3")
        sim.nodes[g3.node_id].host.destroy_vm(g3.vm_id)  # its host lost it
        await c.reconcile()
        assert c.guest("g3").state is GuestState.LOST
        assert_index_matches(c)
        await sim.crash_controller()
        c2 = await sim.restart_controller()
        assert_index_matches(c2)
        assert sum(c2.load(n)[0] for n in c2.nodes) == 2
