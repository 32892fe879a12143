"""Helpers to run node servers in-process (grpc.aio on 127.0.0.1:0) and as real processes."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

import grpc
from kvmtimer.v1 import node_pb2_grpc

from controller.cli.up.launch import kvmtimer_command, kvmtimer_process, wait_for_log_event
from node.core.clock import ManualClock
from node.core.features import ClockMode, HostFeatures
from node.core.host import Host
from node.service.server import build_server, mark_serving
from tests.support.wait import until

__all__ = ["kvmtimer_command", "kvmtimer_process", "wait_for_log_event"]


@dataclass
class InProcessNode:
    """A node server running in this event loop, with a connected client stub."""

    host: Host
    server: grpc.aio.Server
    port: int
    channel: grpc.aio.Channel
    stub: node_pb2_grpc.NodeStub

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def in_process_node(
    features: HostFeatures | None = None,
    *,
    node_id: str = "node-0",
    clock: ManualClock | None = None,
    counter_base: int = 0,
) -> AsyncIterator[InProcessNode]:
    """Serve a simulated host on an ephemeral loopback port for the duration of the block."""
    host = Host(
        node_id,
        features or HostFeatures(),
        clock or ManualClock(),
        counter_base=counter_base,
        clock_mode=ClockMode.SIMULATED,
    )
    server, port, health_servicer = build_server(host)
    await server.start()
    await mark_serving(health_servicer)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield InProcessNode(host, server, port, channel, node_pb2_grpc.NodeStub(channel))
    finally:
        await channel.close(None)
        await server.stop(grace=None)


@dataclass
class NodeProcess:
    """A real `kvmtimer node` process."""

    proc: subprocess.Popen[str]
    port: int
    first_log: dict[str, object]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextlib.contextmanager
def node_process(args: Sequence[str]) -> Iterator[NodeProcess]:
    """Start `kvmtimer node ARGS --listen 127.0.0.1:0`, wait until it listens; SIGTERM it at the end."""
    with kvmtimer_process("node", ["--listen", "127.0.0.1:0", *args], stop_timeout_s=10.0) as proc:
        record = wait_for_log_event(proc, "node_listening")
        port = record["port"]
        assert isinstance(port, int)
        yield NodeProcess(proc, port, record)


async def wait_healthy(address: str, timeout_s: float = 10.0) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        async def serving() -> bool:
            try:
                resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
            except grpc.aio.AioRpcError:
                return False
            return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

        await until(serving, timeout_s=timeout_s, poll_s=0.05, what=f"{address} SERVING")
