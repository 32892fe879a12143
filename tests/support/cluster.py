"""An in-process simulated cluster: node servers sharing one ManualClock, and a Cluster."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from kvmtimer.v1 import controller_pb2_grpc

from controller.core.migration import Limits, MigrationRecord
from controller.service.cluster import Cluster
from controller.service.executor import FaultHook
from controller.service.server import build_server, mark_serving
from controller.service.store import Store
from node.core.clock import NS_PER_S, ManualClock
from node.core.features import HostFeatures
from node.core.host import Host
from node.core.world import advance_hosts
from tests.support.nodes import InProcessNode, in_process_node

CNTFRQ = 25_000_000
DAY_TICKS = 86_400 * CNTFRQ


@dataclass
class SimCluster:
    """Nodes by id, their shared clock, and the controller's Cluster."""

    clock: ManualClock
    nodes: dict[str, InProcessNode]
    cluster: Cluster
    transfer_delay_ns: int = 0  # simulated time a migration's state transfer takes
    transfers: list[str] = field(default_factory=list)
    state_path: Path | None = None  # the controller's state file (None: in memory)

    @property
    def hosts(self) -> list[Host]:
        return [n.host for n in self.nodes.values()]

    def advance_s(self, seconds: float) -> None:
        advance_hosts(self.hosts, self.clock, int(seconds * NS_PER_S))

    def advance_ns(self, ns: int) -> None:
        advance_hosts(self.hosts, self.clock, ns)

    async def crash_controller(self) -> None:
        """What kill -9 leaves: in-flight work stops where it is; only the state file remains."""
        old = self.cluster
        for task in list(old._tasks.values()):
            task.cancel()
        await asyncio.gather(*old._tasks.values(), return_exceptions=True)
        await old.collector.stop()
        await old.pool.close()
        old.store.close()

    async def restart_controller(self, **kwargs: Any) -> Cluster:
        """A new controller on the same state file and nodes: load, reach the nodes, reconcile."""
        assert self.state_path is not None
        cluster = Cluster(health_interval_s=0, store=Store.open(self.state_path), **kwargs)
        cluster.transfer_hook = self.transfer_hook
        cluster.load_state()
        await cluster.recover()
        self.cluster = cluster
        return cluster

    async def transfer_hook(self, record: MigrationRecord) -> None:
        self.transfers.append(record.migration_id)
        if self.transfer_delay_ns:
            self.advance_ns(self.transfer_delay_ns)


@contextlib.asynccontextmanager
async def sim_cluster(
    specs: Sequence[tuple[str, HostFeatures]],
    *,
    limits: Limits | None = None,
    state_path: Path | None = None,
    fault_hook: FaultHook | None = None,
) -> AsyncIterator[SimCluster]:
    """Start one in-process node per (node_id, features), each booted a different number of days ago."""
    clock = ManualClock()
    async with contextlib.AsyncExitStack() as stack:
        nodes = {}
        for n, (node_id, features) in enumerate(specs):
            nodes[node_id] = await stack.enter_async_context(
                in_process_node(features, node_id=node_id, clock=clock, counter_base=(3 + 7 * n) * DAY_TICKS)
            )
        store = Store.open(state_path) if state_path is not None else None
        cluster = Cluster(limits=limits, health_interval_s=0, store=store, fault_hook=fault_hook)
        sim = SimCluster(clock, nodes, cluster, state_path=state_path)
        sim.cluster.transfer_hook = sim.transfer_hook
        for node_id, node in nodes.items():
            await sim.cluster.register_node(node_id, node.address)
        try:
            yield sim
        finally:
            await sim.cluster.stop()


@contextlib.asynccontextmanager
async def controller_stub(cluster: Cluster) -> AsyncIterator[controller_pb2_grpc.ControllerStub]:
    """Serve `cluster` on an ephemeral loopback port; yield a connected Controller stub."""
    server, port, health_servicer = build_server(cluster)
    await server.start()
    await mark_serving(health_servicer)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield controller_pb2_grpc.ControllerStub(channel)
    finally:
        await channel.close(None)
        await server.stop(grace=None)
