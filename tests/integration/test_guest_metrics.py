"""Guest lateness gauges (node/service/guest_metrics.py) against the guest's own observations.

Covers: a VM without a workload has no series; a simulated host delivers every interrupt at its
deadline, so after uneven clock steps the guest reports lateness 0 and so do both gauges; with
late interrupts recorded in guest memory (different per vCPU and timer), the max gauge is the
largest `max_lateness_ticks` GetGuestObservations reports, in seconds at CNTFRQ, and the mean is
the total over the interrupts taken (the observations' `total_lateness_ticks`); a destroyed
VM's series disappear.
"""

from __future__ import annotations

import pytest
from kvmtimer.v1 import node_pb2 as pb
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from node.service.guest_metrics import GuestMetrics
from tests.support.nodes import in_process_node

CNTFRQ_HZ = 25_000_000


def gauges(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, s.labels["vm_id"]): s.value for f in text_string_to_metric_families(text) for s in f.samples
    }


@pytest.mark.asyncio
async def test_lateness_gauges_follow_guest_observations() -> None:
    async with in_process_node(node_id="n1") as node:
        registry = GuestMetrics(node.host).register(CollectorRegistry(auto_describe=False))
        stub = node.stub
        for vm in ("idle", "busy"):
            await stub.CreateVm(pb.CreateVmRequest(vm_id=vm))
            for index in range(2):
                await stub.CreateVcpu(pb.CreateVcpuRequest(vm_id=vm, vcpu_index=index))
        assert gauges(registry) == {}
        spec = pb.WorkloadSpec(period_ticks=1000, use_ptimer=True)
        await stub.StartWorkload(pb.StartWorkloadRequest(vm_id="busy", spec=spec))
        await stub.ResumeVm(pb.ResumeVmRequest(vm_id="busy"))
        for stride in (1700, 333, 4100, 250):
            await stub.StepClock(pb.StepClockRequest(delta_ticks=stride))
        seen = await stub.GetGuestObservations(pb.GetGuestObservationsRequest(vm_id="busy"))
        assert sum(v.vtimer_received for v in seen.vcpus) > 0
        assert max(v.max_lateness_ticks for v in seen.vcpus) == 0
        assert gauges(registry) == {
            ("kvmtimer_node_guest_lateness_max_seconds", "busy"): 0.0,
            ("kvmtimer_node_guest_lateness_mean_seconds", "busy"): 0.0,
        }

        # Late interrupts, as a loaded realtime host records them in guest memory.
        workload = node.host.vm("busy").workload
        assert workload is not None
        received = 0
        for vcpu in workload.vcpus.values():
            for n, timer in enumerate((vcpu.vtimer, vcpu.ptimer)):
                assert timer is not None
                timer.max_lateness_ticks = 1000 * (vcpu.index + 1) + 10 * n
                timer.total_lateness_ticks = 100 * (vcpu.index + 1) * timer.received
                received += timer.received
        seen = await stub.GetGuestObservations(pb.GetGuestObservationsRequest(vm_id="busy"))
        worst_ticks = max(v.max_lateness_ticks for v in seen.vcpus)
        assert worst_ticks == 2010
        totals = sum(
            100 * (v.index + 1) * (t.received)
            for v in workload.vcpus.values()
            for t in (v.vtimer, v.ptimer)
            if t
        )
        # The observations carry the total too (`kvmtimer up` judges overload by the mean).
        assert sum(v.total_lateness_ticks for v in seen.vcpus) == totals
        got = gauges(registry)
        assert got[("kvmtimer_node_guest_lateness_max_seconds", "busy")] == worst_ticks / CNTFRQ_HZ
        assert got[("kvmtimer_node_guest_lateness_mean_seconds", "busy")] == pytest.approx(
            totals / received / CNTFRQ_HZ
        )
        await stub.PauseVm(pb.PauseVmRequest(vm_id="busy"))
        await stub.DestroyVm(pb.DestroyVmRequest(vm_id="busy"))
        assert gauges(registry) == {}
