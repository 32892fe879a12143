"""Prometheus gauges of what the guests on this node observed (read from live guest memory at
scrape time): how late their timer interrupts were taken.

    kvmtimer_node_guest_lateness_max_seconds{node_id,vm_id}   worst lateness of any timer of the VM
    kvmtimer_node_guest_lateness_mean_seconds{node_id,vm_id}  mean lateness over its interrupts

Lateness is (counter when the guest took the interrupt - the deadline it programmed), in the
guest's counter ticks, shown in seconds at the guest's CNTFRQ. It is the guest's own record, so
it moves with the guest across migrations; a VM without a workload has no series.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from node.core.host import Host


class GuestMetrics(Collector):
    def __init__(self, host: Host) -> None:
        self.host = host

    def describe(self) -> Iterable[Metric]:
        return []  # names come from collect(); nothing is read at registration

    def register(self, registry: CollectorRegistry) -> CollectorRegistry:
        """Add these metrics to `registry`; returns it."""
        registry.register(self)
        return registry

    def collect(self) -> Iterable[Metric]:
        worst = GaugeMetricFamily(
            "kvmtimer_node_guest_lateness_max_seconds",
            "Worst lateness of a guest timer interrupt (guest's own record, across migrations)",
            labels=["node_id", "vm_id"],
        )
        mean = GaugeMetricFamily(
            "kvmtimer_node_guest_lateness_mean_seconds",
            "Mean lateness of the guest's timer interrupts (guest's own record, across migrations)",
            labels=["node_id", "vm_id"],
        )
        for vm_id, vm in sorted(self.host.vms.items()):
            workload = vm.workload
            if workload is None:
                continue
            stats = [
                timer
                for vcpu in workload.vcpus.values()
                for timer in (vcpu.vtimer, vcpu.ptimer)
                if timer is not None
            ]
            received = sum(t.received for t in stats)
            hz = workload.cntfrq_hz
            labels = [self.host.node_id, vm_id]
            worst.add_metric(labels, max((t.max_lateness_ticks for t in stats), default=0) / hz)
            mean.add_metric(
                labels, (sum(t.total_lateness_ticks for t in stats) / received / hz) if received else 0.0
            )
        yield worst
        yield mean
