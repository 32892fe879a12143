"""Per-RPC server metrics (node/runtime/grpc_metrics.py) on a real grpc.aio node server.

Covers, with the go-grpc-prometheus names, labels and Go code names: a unary success (started,
handled OK, one message each way, one latency observation); a unary failure (NotFound, no message
sent); a refusal by an inner interceptor (Unauthenticated is counted: metrics are outermost); a
server stream cancelled by its client (server_stream, Canceled, every batch counted as sent); the
reflection service's bidirectional stream (bidi_stream, requests counted as received); an RPC
the server does not have is not counted (grpc answers it before any interceptor).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from kvmtimer.v1 import node_pb2 as pb
from kvmtimer.v1 import node_pb2_grpc
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from node.core.clock import ManualClock
from node.core.features import ClockMode, HostFeatures
from node.core.host import Host
from node.runtime import tls
from node.runtime.grpc_metrics import GrpcServerMetrics
from node.service.server import build_server, mark_serving

NODE = "kvmtimer.v1.Node"
TOKEN = "metrics-token"
UNKNOWN_SYSREG = 0x6030_0000_0013_DF1F  # a KVM_REG_ARM64 sysreg id with no register: ENOENT (case 29)
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(registry: CollectorRegistry) -> Samples:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("grpc_server_")
    }


def labels(kind: str, service: str, method: str, **extra: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"grpc_type": kind, "grpc_service": service, "grpc_method": method, **extra}.items()))


async def served(token: str | None = None) -> tuple[grpc.aio.Server, int, CollectorRegistry]:
    host = Host("n1", HostFeatures(), ManualClock(), counter_base=0, clock_mode=ClockMode.SIMULATED)
    metrics = GrpcServerMetrics()
    inner = (tls.BearerTokenInterceptor(token),) if token else ()
    server, port, health = build_server(host, interceptors=(metrics, *inner))
    await server.start()
    await mark_serving(health)
    return server, port, metrics.register(CollectorRegistry(auto_describe=False))


@pytest.mark.asyncio
async def test_unary_calls_counted_by_code() -> None:
    server, port, registry = await served()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = node_pb2_grpc.NodeStub(channel)
            await stub.GetHostInfo(pb.GetHostInfoRequest())
            await stub.CreateVm(pb.CreateVmRequest(vm_id="vm"))
            await stub.CreateVcpu(pb.CreateVcpuRequest(vm_id="vm", vcpu_index=0))
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                bad_write = pb.SetOneRegRequest(vm_id="vm", vcpu_index=0, reg_id=UNKNOWN_SYSREG, value=1)
                await stub.SetOneReg(bad_write)
            assert bad.value.code() == grpc.StatusCode.NOT_FOUND
            unknown = channel.unary_unary(
                f"/{NODE}/NoSuchRpc", request_serializer=bytes, response_deserializer=bytes
            )
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await unknown(b"")
            assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED
        got = samples(registry)
    finally:
        await server.stop(None)
    info = labels("unary", NODE, "GetHostInfo")
    assert got[("grpc_server_started_total", info)] == 1
    assert got[("grpc_server_handled_total", labels("unary", NODE, "GetHostInfo", grpc_code="OK"))] == 1
    assert got[("grpc_server_msg_received_total", info)] == 1
    assert got[("grpc_server_msg_sent_total", info)] == 1
    assert got[("grpc_server_handling_seconds_count", info)] == 1
    assert got[("grpc_server_handling_seconds_bucket", labels("unary", NODE, "GetHostInfo", le="+Inf"))] == 1
    bad_call = labels("unary", NODE, "SetOneReg")
    assert got[("grpc_server_handled_total", labels("unary", NODE, "SetOneReg", grpc_code="NotFound"))] == 1
    assert ("grpc_server_handled_total", labels("unary", NODE, "SetOneReg", grpc_code="OK")) not in got
    assert got[("grpc_server_msg_sent_total", bad_call)] == 0
    assert not any(dict(key[1]).get("grpc_method") == "NoSuchRpc" for key in got)


@pytest.mark.asyncio
async def test_refusal_by_inner_interceptor_is_counted() -> None:
    server, port, registry = await served(token=TOKEN)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = node_pb2_grpc.NodeStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.GetHostInfo(pb.GetHostInfoRequest())
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            await stub.GetHostInfo(pb.GetHostInfoRequest(), metadata=(("authorization", f"Bearer {TOKEN}"),))
        got = samples(registry)
    finally:
        await server.stop(None)
    for code in ("Unauthenticated", "OK"):
        assert got[("grpc_server_handled_total", labels("unary", NODE, "GetHostInfo", grpc_code=code))] == 1


@pytest.mark.asyncio
async def test_streams_counted_with_type_messages_and_cancel() -> None:
    server, port, registry = await served()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = node_pb2_grpc.NodeStub(channel)
            await stub.CreateVm(pb.CreateVmRequest(vm_id="vm"))
            await stub.CreateVcpu(pb.CreateVcpuRequest(vm_id="vm", vcpu_index=0))
            call = stub.WatchTelemetry(pb.WatchTelemetryRequest(rate_hz=200))
            batches = 0
            async for _ in call:
                batches += 1
                if batches == 3:
                    break
            call.cancel()

            async def requests() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
                for _ in range(2):
                    yield reflection_pb2.ServerReflectionRequest(list_services="")

            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            replies = [r async for r in reflection.ServerReflectionInfo(requests())]
            assert len(replies) == 2

            watch = labels("server_stream", NODE, "WatchTelemetry")
            canceled = labels("server_stream", NODE, "WatchTelemetry", grpc_code="Canceled")
            deadline = asyncio.get_running_loop().time() + 10
            while ("grpc_server_handled_total", canceled) not in samples(registry):
                assert asyncio.get_running_loop().time() < deadline, samples(registry)
                await asyncio.sleep(0.02)
        got = samples(registry)
    finally:
        await server.stop(None)
    assert got[("grpc_server_started_total", watch)] == 1
    assert got[("grpc_server_handled_total", canceled)] == 1
    assert got[("grpc_server_msg_sent_total", watch)] >= 3
    reflection_rpc = ("grpc.reflection.v1alpha.ServerReflection", "ServerReflectionInfo")
    bidi = labels("bidi_stream", *reflection_rpc)
    assert got[("grpc_server_msg_received_total", bidi)] == 2
    assert got[("grpc_server_msg_sent_total", bidi)] == 2
    assert got[("grpc_server_handled_total", labels("bidi_stream", *reflection_rpc, grpc_code="OK"))] == 1
