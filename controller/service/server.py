"""Build the controller's grpc.aio server: Controller service, health and reflection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer  # health.aio, which the stubs lack
from grpc_reflection.v1alpha import reflection
from kvmtimer.v1 import controller_pb2, controller_pb2_grpc

from controller.service.cluster import Cluster
from controller.service.servicer import ControllerServicer

CONTROLLER_SERVICE = controller_pb2.DESCRIPTOR.services_by_name["Controller"].full_name


def build_server(
    cluster: Cluster,
    addr: str = "127.0.0.1:0",
    *,
    credentials: grpc.ServerCredentials | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
) -> tuple[grpc.aio.Server, int, HealthServicer]:
    """`credentials`: mutual TLS (node.runtime.serving); `interceptors`: caller checks (bearer token)."""
    server = grpc.aio.server(interceptors=interceptors)
    controller_pb2_grpc.add_ControllerServicer_to_server(ControllerServicer(cluster), server)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (CONTROLLER_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_secure_port(addr, credentials) if credentials else server.add_insecure_port(addr)
    return server, port, health_servicer


async def mark_serving(health_servicer: HealthServicer) -> None:
    for name in ("", CONTROLLER_SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
