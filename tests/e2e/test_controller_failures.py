"""Failure in the middle of a migration, with real node processes.

Edge cases covered:
- the destination node process is killed (SIGKILL) after the source paused: the migration ends
  FAILED with the reason, the destination is marked down, the guest resumes on the source with its
  state unchanged (counter continuous, timers firing) and runs nowhere else;
- the destination dies before the source is paused: the source is never stopped.
"""

from __future__ import annotations

import asyncio
import signal

import pytest

from controller.core.migration import Method, MigrationRecord, Phase
from controller.core.model import GuestRecord
from controller.service.cluster import Cluster
from node.core.workload import WorkloadSpec
from tests.support.nodes import NodeProcess, node_process
from tests.support.wait import until

pytestmark = pytest.mark.e2e


async def timer_fired_on_every_vcpu(cluster: Cluster, guest: GuestRecord) -> bool:
    obs = await cluster.observations(guest)
    return obs.running and all(v.vtimer_received > 0 for v in obs.vcpus)


async def kept_running(cluster: Cluster, guest: GuestRecord) -> bool:
    obs = await cluster.observations(guest)
    return obs.running and all(v.reads > 10 for v in obs.vcpus)


PERIOD = 250_000  # 10 ms at 25 MHz


def kill(node: NodeProcess) -> None:
    node.proc.send_signal(signal.SIGKILL)
    node.proc.wait(timeout=10)


@pytest.mark.asyncio
@pytest.mark.parametrize("when", ["transfer", "prepare"])
async def test_destination_killed_mid_migration_guest_resumes_on_source(when: str) -> None:
    with (
        node_process(["--node-id", "src", "--ecv", "2", "--vhe"]) as src,
        node_process(["--node-id", "dst", "--ecv", "0"]) as dst,
    ):
        cluster = Cluster(health_interval_s=0, node_timeout_s=2.0)
        try:
            await cluster.register_node("src", src.address)
            await cluster.register_node("dst", dst.address)
            guest = await cluster.create_guest("g", 2, WorkloadSpec(PERIOD, use_ptimer=True), "src")
            await until(lambda: timer_fired_on_every_vcpu(cluster, guest), what="the guest running")

            if when == "prepare":
                kill(dst)
            else:

                async def kill_destination(record: MigrationRecord) -> None:
                    await asyncio.to_thread(kill, dst)

                cluster.transfer_hook = kill_destination

            record = await cluster.migrate("g", "dst", Method.AUTO, wait=True)
            assert record.phase is Phase.FAILED
            assert "dst" in record.reason and ("UNAVAILABLE" in record.reason or "DEADLINE" in record.reason)
            assert not cluster.node("dst").healthy
            assert guest.node_id == "src" and guest.migrating is None
            if when == "prepare":
                assert "pause" not in record.steps
            else:
                assert record.steps[-1] == "rollback"

            await until(lambda: kept_running(cluster, guest), what="the guest running on after the failure")
            obs = await cluster.observations(guest)
            assert obs.running
            for v in obs.vcpus:
                assert v.min_step_v >= 0 and v.min_step_p >= 0
                # The interrupt due right now may not have been taken yet.
                assert v.vtimer_expected - 1 <= v.vtimer_received <= v.vtimer_expected
                assert v.reads > 10
                if when == "transfer":
                    # Stopped on the source and continued there: the counter kept real time.
                    assert abs(v.last_jump_error_ticks) < 25_000  # < 1 ms of scheduling noise
        finally:
            await cluster.stop()
