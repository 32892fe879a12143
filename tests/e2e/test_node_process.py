"""`kvmtimer node` as a real process, spoken to over gRPC on an ephemeral port.

Covers: the CLI flags reach the host (GetHostInfo fields exactly), VM/vCPU creation,
StepClock and an exact TIMER_CNT read in simulated mode, gRPC health SERVING, SIGTERM
-> graceful stop with exit code 0 and `node_stopping`/`node_stopped` JSON log lines;
in realtime mode the host and guest counters advance at roughly cntfrq.
"""

from __future__ import annotations

import asyncio
import signal
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kvmtimer.v1 import node_pb2 as pb
from kvmtimer.v1 import node_pb2_grpc

from tests.support.nodes import node_process, wait_for_log_event, wait_healthy

TIMER_CNT = 0x603000000013DF1A
PTIMER_CNT = 0x603000000013DF01
SIMULATED_ARGS = [
    "--clock",
    "simulated",
    "--node-id",
    "e2e-sim",
    "--cntfrq",
    "25000000",
    "--ecv",
    "2",
    "--vhe",
    "--api-profile",
    "VM_COUNTER_OFFSET",
    "--counter-base",
    "1000000",
]

pytestmark = pytest.mark.e2e


@pytest.mark.asyncio
async def test_simulated_node_process_serves_and_stops_cleanly() -> None:
    with node_process(SIMULATED_ARGS) as proc:
        assert proc.first_log["node_id"] == "e2e-sim"
        assert proc.first_log["api_profile"] == "VM_COUNTER_OFFSET"
        await wait_healthy(proc.address)
        async with grpc.aio.insecure_channel(proc.address) as channel:
            stub = node_pb2_grpc.NodeStub(channel)
            info: pb.HostInfo = await stub.GetHostInfo(pb.GetHostInfoRequest())
            assert (
                info.node_id,
                info.cntfrq_hz,
                info.ecv,
                info.vhe,
                info.api_profile,
                info.clock_mode,
                info.host_counter,
                info.has_cntpoff,
                info.vm_count,
            ) == (
                "e2e-sim",
                25_000_000,
                2,
                True,
                pb.API_PROFILE_VM_COUNTER_OFFSET,
                pb.CLOCK_MODE_SIMULATED,
                1_000_000,  # the simulated counter has not moved since boot
                True,
                0,
            )
            # A simulated host's realtime starts at the wall clock.
            assert abs(info.realtime_ns - time.time_ns()) < 60 * 10**9

            await stub.CreateVm(pb.CreateVmRequest(vm_id="vm"))
            await stub.CreateVcpu(pb.CreateVcpuRequest(vm_id="vm", vcpu_index=0))  # voffset = 1_000_000
            stepped: pb.StepClockResponse = await stub.StepClock(pb.StepClockRequest(delta_ticks=25_000_000))
            assert stepped.host_counter == 26_000_000
            assert stepped.realtime_ns - info.realtime_ns == 10**9
            cnt: pb.GetOneRegResponse = await stub.GetOneReg(
                pb.GetOneRegRequest(vm_id="vm", vcpu_index=0, reg_id=TIMER_CNT)
            )
            assert cnt.value == 25_000_000
            pct: pb.GetOneRegResponse = await stub.GetOneReg(
                pb.GetOneRegRequest(vm_id="vm", vcpu_index=0, reg_id=PTIMER_CNT)
            )
            assert pct.value == 26_000_000
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetOneReg(pb.GetOneRegRequest(vm_id="vm", vcpu_index=0, reg_id=0x603000000013DF1F))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND  # ENOENT: no such register
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetOneReg(pb.GetOneRegRequest(vm_id="vm", vcpu_index=0, reg_id=0))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # EINVAL: not a KVM_REG_ARM64 id

            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "kvmtimer.v1.Node"):
                resp = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert resp.status == health_pb2.HealthCheckResponse.SERVING

        proc.proc.send_signal(signal.SIGTERM)
        stopping = await asyncio.to_thread(wait_for_log_event, proc.proc, "node_stopping")
        stopped = await asyncio.to_thread(wait_for_log_event, proc.proc, "node_stopped")
        assert stopping["node_id"] == stopped["node_id"] == "e2e-sim"
        assert stopped["level"] == "info"
        assert await asyncio.to_thread(proc.proc.wait, 10) == 0


@pytest.mark.asyncio
async def test_realtime_counter_advances_at_cntfrq() -> None:
    cntfrq_hz = 1_000_000
    with node_process(["--clock", "realtime", "--cntfrq", str(cntfrq_hz), "--node-id", "e2e-rt"]) as proc:
        await wait_healthy(proc.address)
        async with grpc.aio.insecure_channel(proc.address) as channel:
            stub = node_pb2_grpc.NodeStub(channel)
            info: pb.HostInfo = await stub.GetHostInfo(pb.GetHostInfoRequest())
            assert (info.clock_mode, info.cntfrq_hz) == (pb.CLOCK_MODE_REALTIME, cntfrq_hz)
            await stub.CreateVm(pb.CreateVmRequest(vm_id="vm"))
            await stub.CreateVcpu(pb.CreateVcpuRequest(vm_id="vm", vcpu_index=0))

            first: pb.GetClockResponse = await stub.GetClock(pb.GetClockRequest())
            g1: pb.GetOneRegResponse = await stub.GetOneReg(
                pb.GetOneRegRequest(vm_id="vm", vcpu_index=0, reg_id=TIMER_CNT)
            )
            t1 = time.monotonic()
            await asyncio.sleep(0.5)  # the interval measured (real time passing), not a wait on an event
            second: pb.GetClockResponse = await stub.GetClock(pb.GetClockRequest())
            g2: pb.GetOneRegResponse = await stub.GetOneReg(
                pb.GetOneRegRequest(vm_id="vm", vcpu_index=0, reg_id=TIMER_CNT)
            )
            local_s = time.monotonic() - t1

            ticks = second.host_counter - first.host_counter
            node_s = (second.realtime_ns - first.realtime_ns) / 1e9
            # Counter and realtime are sampled together: the rates agree to within 5 %.
            assert ticks == pytest.approx(node_s * cntfrq_hz, rel=0.05)
            # Loosely against this process's own clock (scheduling noise on a busy machine).
            assert 0.4 * cntfrq_hz <= ticks <= (local_s + 0.5) * cntfrq_hz
            # The guest's virtual counter ticks with the host counter.
            assert g2.value - g1.value == pytest.approx(ticks, rel=0.2)

            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.StepClock(pb.StepClockRequest(delta_ticks=1))
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
