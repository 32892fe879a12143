"""Async client for one node: every grpc error becomes a NodeCallError (domain error)."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kvmtimer.v1 import controller_pb2 as cpb
from kvmtimer.v1 import node_pb2 as pb
from kvmtimer.v1 import node_pb2_grpc

from controller.core.errors import NodeCallError
from controller.core.migration import RegWrite
from node.core.uapi import KVM_ARM_VCPU_TIMER_CTRL, KVM_ARM_VCPU_TIMER_PHYS_OFFSET
from node.runtime.protowire import field_1_prefix
from node.runtime.tls import aio_channel

DEFAULT_TIMEOUT_S = 5.0


class Health(enum.Enum):
    """One health check's answer."""

    SERVING = "serving"  # the node answered SERVING
    DOWN = "down"  # refused, unreachable or NOT_SERVING: the host is gone or stopping
    SLOW = "slow"  # no answer within the deadline: busy or gone, not yet known


WATCH_TELEMETRY = "/kvmtimer.v1.Node/WatchTelemetry"


def errno_from(err: grpc.aio.AioRpcError) -> str | None:
    """The node's `kvm-errno` trailing metadata, if any."""
    metadata: Any = err.trailing_metadata() or ()
    for key, value in metadata:
        if key == "kvm-errno":
            return str(value)
    return None


class NodeClient:
    """The VMM side of one node's ioctl surface."""

    def __init__(
        self,
        node_id: str,
        address: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        credentials: grpc.ChannelCredentials | None = None,
        server_name: str | None = None,
    ) -> None:
        """`credentials`: mutual TLS (None = plaintext); `server_name`: expected certificate name."""
        self.node_id = node_id
        self.address = address
        self.timeout_s = timeout_s
        self.channel = aio_channel(address, credentials, server_name=server_name)
        self.closed = False  # close() was called: calls fail as UNAVAILABLE
        self.stub = node_pb2_grpc.NodeStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    async def close(self) -> None:
        self.closed = True
        await self.channel.close(None)

    async def _call(self, rpc: str, request: Any, timeout_s: float | None = None) -> Any:
        try:
            return await getattr(self.stub, rpc)(request, timeout=timeout_s or self.timeout_s)
        except grpc.aio.AioRpcError as err:
            errno_name = errno_from(err)
            raise NodeCallError(self.node_id, rpc, err.code().name, errno_name, err.details() or "") from None
        except grpc.aio.UsageError:
            # A caller still holding this client after the pool replaced and closed it (the
            # node re-registered meanwhile): the node is unreachable through it, not a crash.
            if not self.closed:
                raise
            raise NodeCallError(self.node_id, rpc, "UNAVAILABLE", None, "client closed") from None

    async def check_health(self, timeout_s: float = 1.0) -> Health:
        try:
            resp = await self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        except grpc.aio.AioRpcError as err:
            return Health.SLOW if err.code() is grpc.StatusCode.DEADLINE_EXCEEDED else Health.DOWN
        return Health.SERVING if resp.status == health_pb2.HealthCheckResponse.SERVING else Health.DOWN

    async def host_info(self) -> pb.HostInfo:
        result: pb.HostInfo = await self._call("GetHostInfo", pb.GetHostInfoRequest())
        return result

    async def get_clock(self) -> tuple[int, int]:
        resp = await self._call("GetClock", pb.GetClockRequest())
        return int(resp.host_counter), int(resp.realtime_ns)

    async def create_vm(self, vm_id: str) -> str:
        resp = await self._call("CreateVm", pb.CreateVmRequest(vm_id=vm_id))
        return str(resp.vm_id)

    async def list_vms(self) -> list[pb.VmSummary]:
        resp = await self._call("ListVms", pb.ListVmsRequest())
        return list(resp.vms)

    async def destroy_vm(self, vm_id: str) -> None:
        await self._call("DestroyVm", pb.DestroyVmRequest(vm_id=vm_id))

    async def create_vcpu(self, vm_id: str, index: int) -> None:
        await self._call("CreateVcpu", pb.CreateVcpuRequest(vm_id=vm_id, vcpu_index=index))

    async def enable_cap(self, vm_id: str, cap: int) -> None:
        await self._call("EnableCap", pb.EnableCapRequest(vm_id=vm_id, cap=cap))

    async def set_counter_offset(self, vm_id: str, offset: int) -> None:
        await self._call("SetCounterOffset", pb.SetCounterOffsetRequest(vm_id=vm_id, counter_offset=offset))

    async def get_attr(self, vm_id: str, attr: int, vcpu: int = 0) -> int:
        req = pb.DeviceAttrRequest(vm_id=vm_id, vcpu_index=vcpu, group=KVM_ARM_VCPU_TIMER_CTRL, attr=attr)
        resp = await self._call("GetDeviceAttr", req)
        return int(resp.value)

    async def set_attr(self, vm_id: str, attr: int, value: int, vcpu: int = 0) -> None:
        req = pb.SetDeviceAttrRequest(
            vm_id=vm_id, vcpu_index=vcpu, group=KVM_ARM_VCPU_TIMER_CTRL, attr=attr, value=value
        )
        await self._call("SetDeviceAttr", req)

    async def set_phys_offset(self, vm_id: str, value: int) -> None:
        await self.set_attr(vm_id, KVM_ARM_VCPU_TIMER_PHYS_OFFSET, value)

    async def get_regs(self, vm_id: str, entries: Sequence[tuple[int, int]]) -> tuple[list[int], int, int]:
        """Values in request order, plus the (host counter, realtime) they were read at."""
        req = pb.GetRegsRequest(vm_id=vm_id, regs=[pb.RegValue(vcpu_index=i, reg_id=r) for i, r in entries])
        resp = await self._call("GetRegs", req)
        return [int(r.value) for r in resp.regs], int(resp.host_counter), int(resp.realtime_ns)

    async def set_regs(self, vm_id: str, writes: Sequence[RegWrite]) -> None:
        if not writes:
            return
        req = pb.SetRegsRequest(
            vm_id=vm_id,
            regs=[pb.RegValue(vcpu_index=w.vcpu_index, reg_id=w.reg_id, value=w.value) for w in writes],
        )
        await self._call("SetRegs", req)

    async def pause(self, vm_id: str) -> None:
        await self._call("PauseVm", pb.PauseVmRequest(vm_id=vm_id))

    async def resume(self, vm_id: str) -> None:
        await self._call("ResumeVm", pb.ResumeVmRequest(vm_id=vm_id))

    async def vcpu_state(self, vm_id: str, index: int) -> pb.VcpuStateInfo:
        result: pb.VcpuStateInfo = await self._call(
            "GetVcpuState", pb.GetVcpuStateRequest(vm_id=vm_id, vcpu_index=index)
        )
        return result

    async def start_workload(self, vm_id: str, spec: pb.WorkloadSpec) -> None:
        await self._call("StartWorkload", pb.StartWorkloadRequest(vm_id=vm_id, spec=spec))

    async def save_workload(self, vm_id: str) -> pb.WorkloadState:
        result: pb.WorkloadState = await self._call("SaveWorkload", pb.SaveWorkloadRequest(vm_id=vm_id))
        return result

    async def load_workload(self, vm_id: str, state: pb.WorkloadState) -> None:
        await self._call("LoadWorkload", pb.LoadWorkloadRequest(vm_id=vm_id, state=state))

    async def observations(self, vm_id: str, include_samples: bool = False) -> pb.GuestObservations:
        result: pb.GuestObservations = await self._call(
            "GetGuestObservations",
            pb.GetGuestObservationsRequest(vm_id=vm_id, include_samples=include_samples),
        )
        return result

    async def step_clock(self, delta_ticks: int) -> int:
        resp = await self._call("StepClock", pb.StepClockRequest(delta_ticks=delta_ticks))
        return int(resp.host_counter)

    async def batch(self, calls: Sequence[pb.BatchCall]) -> list[pb.BatchResult]:
        """Run calls back to back on the node in one round trip (stops at the first failure)."""
        resp = await self._call("Batch", pb.BatchRequest(calls=calls))
        return list(resp.results)

    async def watch_telemetry(
        self, rate_hz: float, max_batch: int = 0
    ) -> AsyncIterator[cpb.ClusterTelemetry]:
        """The node's WatchTelemetry stream, each batch already wrapped as the cluster item
        (`ClusterTelemetry.samples`) it becomes; ends when the node ends it. NodeCallError
        when the stream breaks."""
        method = self.channel.unary_stream(
            WATCH_TELEMETRY,
            request_serializer=pb.WatchTelemetryRequest.SerializeToString,
            response_deserializer=cluster_item_from_batch,
        )
        call = method(pb.WatchTelemetryRequest(rate_hz=rate_hz, max_batch=max_batch))
        try:
            async for item in call:
                yield item
        except grpc.aio.AioRpcError as err:
            raise NodeCallError(
                self.node_id, "WatchTelemetry", err.code().name, errno_from(err), err.details() or ""
            ) from None
        finally:
            call.cancel()


def cluster_item_from_batch(data: bytes) -> cpb.ClusterTelemetry:
    """Parse a serialised TelemetryBatch straight into the ClusterTelemetry that carries it.

    Policy: the bytes of a message with one field-1 submessage are that field's tag and
    length followed by the submessage's bytes, so one parse gives the wrapped item; parsing
    the batch and then copying it into a ClusterTelemetry would cost a second pass over
    every sample (the collector's hottest path).
    """
    # ClusterTelemetry.samples is field 1, length-delimited.
    return cpb.ClusterTelemetry.FromString(field_1_prefix(len(data)) + data)
