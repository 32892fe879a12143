"""Build the node's grpc.aio server: Node service, health and reflection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer  # health.aio, which the stubs lack
from grpc_reflection.v1alpha import reflection
from kvmtimer.v1 import node_pb2, node_pb2_grpc

from node.core.host import Host
from node.service.servicer import NodeServicer
from node.service.telemetry import TelemetryStreams

NODE_SERVICE = node_pb2.DESCRIPTOR.services_by_name["Node"].full_name


def build_server(
    host: Host,
    addr: str = "127.0.0.1:0",
    *,
    credentials: grpc.ServerCredentials | None = None,
    telemetry: TelemetryStreams | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
) -> tuple[grpc.aio.Server, int, HealthServicer]:
    """A ready-to-start server for `host`; returns (server, bound port, health servicer).

    Pass `telemetry` to see the node's telemetry streams (metrics) and to end them
    (`telemetry.close()`) before stopping the server. `credentials`/`interceptors`: mutual TLS
    and caller checks (node.runtime.serving).
    """
    server = grpc.aio.server(interceptors=interceptors)
    node_pb2_grpc.add_NodeServicer_to_server(NodeServicer(host, telemetry), server)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((NODE_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_secure_port(addr, credentials) if credentials else server.add_insecure_port(addr)
    return server, port, health_servicer


async def mark_serving(health_servicer: HealthServicer) -> None:
    for name in ("", NODE_SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


async def mark_not_serving(health_servicer: HealthServicer) -> None:
    await health_servicer.enter_graceful_shutdown()
