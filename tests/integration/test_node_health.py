"""Standard services next to kvmtimer.v1.Node: gRPC health (SERVING for "" and the Node service,
NOT_FOUND for unknown names) and server reflection (lists kvmtimer.v1.Node and resolves its file)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.support.nodes import InProcessNode, in_process_node, wait_healthy


@pytest_asyncio.fixture
async def node() -> AsyncIterator[InProcessNode]:
    async with in_process_node() as n:
        yield n


@pytest.mark.asyncio
@pytest.mark.parametrize("service", ["", "kvmtimer.v1.Node"])
async def test_health_serving(node: InProcessNode, service: str) -> None:
    stub = health_pb2_grpc.HealthStub(node.channel)
    resp = await stub.Check(health_pb2.HealthCheckRequest(service=service))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    await wait_healthy(node.address)


@pytest.mark.asyncio
async def test_health_unknown_service(node: InProcessNode) -> None:
    stub = health_pb2_grpc.HealthStub(node.channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Check(health_pb2.HealthCheckRequest(service="kvmtimer.v1.Nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def reflect(node: InProcessNode, request: reflection_pb2.ServerReflectionRequest) -> Any:
    stub = reflection_pb2_grpc.ServerReflectionStub(node.channel)
    responses = [r async for r in stub.ServerReflectionInfo(iter([request]))]
    assert len(responses) == 1
    return responses[0]


@pytest.mark.asyncio
async def test_reflection_lists_node_service(node: InProcessNode) -> None:
    resp = await reflect(node, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in resp.list_services_response.service}
    assert names == {
        "kvmtimer.v1.Node",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


@pytest.mark.asyncio
async def test_reflection_resolves_node_proto(node: InProcessNode) -> None:
    resp = await reflect(
        node, reflection_pb2.ServerReflectionRequest(file_containing_symbol="kvmtimer.v1.Node")
    )
    raw = resp.file_descriptor_response.file_descriptor_proto
    files = [descriptor_pb2.FileDescriptorProto.FromString(b) for b in raw]
    node_file = next(f for f in files if f.name == "kvmtimer/v1/node.proto")
    assert node_file.package == "kvmtimer.v1"
    methods = {m.name for m in node_file.service[0].method}
    assert {
        "GetHostInfo",
        "CheckExtension",
        "EnableCap",
        "CreateVm",
        "DestroyVm",
        "CreateVcpu",
        "GetOneReg",
        "SetOneReg",
        "GetRegList",
        "HasDeviceAttr",
        "GetDeviceAttr",
        "SetDeviceAttr",
        "SetCounterOffset",
        "GetClock",
        "RunVcpu",
        "PauseVm",
        "ResumeVm",
        "StepClock",
        "GetRegs",
        "SetRegs",
    } <= methods
