"""A node client used after it was closed (the pool replaced it when the node re-registered while
a reconciliation round still held it): its calls fail as the node being unreachable
(NodeCallError, UNAVAILABLE), which reconciliation treats as "nothing known about this node this
round", instead of grpc's UsageError escaping and stopping the controller.

Seen for real in tests/e2e/test_image.py: a restarted controller's DNS discovery re-registered a
node while `Cluster.recover()` listed its VMs through the client being replaced.
"""

from __future__ import annotations

import asyncio

import pytest

from controller.clients.node import NodeClient
from controller.core.errors import NodeCallError
from node.core.clock import ManualClock
from node.core.features import ClockMode, HostFeatures
from node.core.host import Host
from node.service.server import build_server


@pytest.mark.asyncio
async def test_calls_on_a_closed_client_are_unavailable() -> None:
    host = Host("n1", HostFeatures(), ManualClock(), counter_base=0, clock_mode=ClockMode.SIMULATED)
    server, port, _ = build_server(host)
    await server.start()
    try:
        client = NodeClient("n1", f"127.0.0.1:{port}")
        assert await client.list_vms() == []
        await client.close()
        with pytest.raises(NodeCallError) as closed:
            await client.list_vms()
        assert closed.value.code == "UNAVAILABLE" and closed.value.unreachable
        assert (closed.value.node_id, closed.value.rpc) == ("n1", "ListVms")
    finally:
        await server.stop(None)


@pytest.mark.asyncio
async def test_a_node_registered_twice_at_once_keeps_one_open_client() -> None:
    """Self-registration and DNS discovery of one node at the same moment: one client is opened
    and kept; neither registration closes a client the other installed."""
    from controller.service.nodes import NodePool

    host = Host("n1", HostFeatures(), ManualClock(), counter_base=0, clock_mode=ClockMode.SIMULATED)
    server, port, _ = build_server(host)
    await server.start()
    pool = NodePool()
    opened: list[NodeClient] = []
    connect = pool.connect

    def counting_connect(node_id: str, address: str) -> NodeClient:
        opened.append(connect(node_id, address))
        return opened[-1]

    pool.connect = counting_connect  # type: ignore[method-assign]
    try:
        first, second = await asyncio.gather(
            pool.register("n1", f"127.0.0.1:{port}"), pool.register("n1", f"127.0.0.1:{port}")
        )
        assert first is second
        assert len(opened) == 1 and not any(c.closed for c in opened)
        assert pool.clients[first.node_id] is opened[0]
        assert await pool.clients[first.node_id].list_vms() == []
    finally:
        await pool.close()
        await server.stop(None)
