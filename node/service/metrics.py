"""Prometheus metrics of one node, computed from the live Host at scrape time."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from node.core.host import Host
from node.core.telemetry import host_totals
from node.service.telemetry import TelemetryStreams


class NodeMetrics(Collector):
    """kvmtimer_node_* families, labelled with the node id."""

    def __init__(self, host: Host, telemetry: TelemetryStreams) -> None:
        self.host = host
        self.telemetry = telemetry

    def describe(self) -> Iterable[Metric]:
        return []  # names come from collect(); nothing is read at registration

    def collect(self) -> Iterable[Metric]:
        totals = host_totals(self.host)
        node = [self.host.node_id]
        realtime = self.host.counter.realtime_state()
        families: list[tuple[type[CounterMetricFamily] | type[GaugeMetricFamily], str, str, float]] = [
            (GaugeMetricFamily, "kvmtimer_node_vms", "VMs on this node", totals.vms),
            (GaugeMetricFamily, "kvmtimer_node_vcpus", "vCPUs on this node", totals.vcpus),
            (
                CounterMetricFamily,
                "kvmtimer_node_timer_traps",
                "Guest timer register accesses emulated at EL2 (destroyed VMs included)",
                totals.traps,
            ),
            (
                CounterMetricFamily,
                "kvmtimer_node_guest_interrupts",
                "Guest timer interrupts delivered on this node",
                totals.guest_interrupts,
            ),
            (
                CounterMetricFamily,
                "kvmtimer_node_telemetry_samples",
                "vCPU samples sent on WatchTelemetry streams",
                self.telemetry.samples_total,
            ),
            (
                CounterMetricFamily,
                "kvmtimer_node_telemetry_dropped_samples",
                "vCPU samples dropped because a WatchTelemetry client was slow",
                self.telemetry.dropped_total,
            ),
            (
                GaugeMetricFamily,
                "kvmtimer_node_telemetry_streams",
                "Open WatchTelemetry streams",
                self.telemetry.open_streams,
            ),
            (
                GaugeMetricFamily,
                "kvmtimer_node_realtime_skew_ns",
                "Configured deliberate skew of this host's realtime (ns)",
                realtime.skew_ns,
            ),
            (
                GaugeMetricFamily,
                "kvmtimer_node_realtime_drift_ppm",
                "Configured deliberate drift rate of this host's realtime (ppm)",
                realtime.drift_ppm,
            ),
            (
                GaugeMetricFamily,
                "kvmtimer_node_realtime_offset_ns",
                "This host's realtime minus the machine's now: skew + drift so far + steps (ns)",
                realtime.offset_ns,
            ),
        ]
        for kind, name, doc, value in families:
            family = kind(name, doc, labels=["node_id"])
            family.add_metric(node, value)
            yield family


def node_registry(host: Host, telemetry: TelemetryStreams) -> CollectorRegistry:
    """A registry of this node's metrics only (not the process-global default)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeMetrics(host, telemetry))
    return registry
