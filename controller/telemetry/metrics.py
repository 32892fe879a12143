"""Prometheus metrics of the controller, from the live Cluster at scrape time.

Policy: migration metrics are fed from the migration records themselves rather than
from the event hub (which drops events for slow readers): each scrape first observes
every record that ended since the last scrape, exactly once, so a counter or histogram
never misses or double-counts a migration however rarely it is scraped.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.core.migration import MigrationRecord, Phase
from controller.core.model import GuestState, MigrationId
from controller.telemetry.bridge import MqttTelemetry
from controller.telemetry.collector import TelemetryCollector
from controller.telemetry.view import ClusterView
from node.runtime.mqtt import DROP_DISCONNECTED, DROP_QUEUE_FULL, DROP_SEND_FAILED, DROP_STOPPED

# Source paused -> destination resumed.
DOWNTIME_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# |guest counter jump - real time over the stop|: 0 for exact offset methods, the downtime
# in ticks for BY_VALUE (12.5M ticks for 0.5 s at 25 MHz).
COUNTER_ERROR_BUCKETS_TICKS = (0.0, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9)


def outcome(record: MigrationRecord) -> str:
    """succeeded, cancelled, lost (its host crashed) or failed (an ended record only)."""
    if record.phase is Phase.SUCCEEDED:
        return "succeeded"
    if record.recovered == "lost":
        return "lost"
    return "cancelled" if record.cancelled else "failed"


def method_label(record: MigrationRecord) -> str:
    method = record.method or record.requested_method
    return method.name.lower()


class MetricsView(ClusterView, Protocol):
    """The cluster as its metrics read it: the view plus the collector's counters."""

    @property
    def collector(self) -> TelemetryCollector: ...  # node streams (drop and sample counters)


class ControllerMetrics(Collector):
    """kvmtimer_migration* and kvmtimer_controller_* families of one Cluster."""

    def __init__(self, cluster: MetricsView) -> None:
        self.cluster = cluster
        self._observed: set[MigrationId] = set()
        self.migrations = Counter(
            "kvmtimer_migrations",
            "Migrations that ended, by the method used and outcome",
            ["method", "outcome"],
            registry=None,
        )
        self.downtime = Histogram(
            "kvmtimer_migration_downtime_seconds",
            "Guest downtime of successful migrations: source paused -> destination resumed",
            ["method"],
            buckets=DOWNTIME_BUCKETS_S,
            registry=None,
        )
        self.counter_error = Histogram(
            "kvmtimer_migration_counter_error_ticks",
            "Absolute guest counter error over the stop (counter jump minus real time), in ticks",
            ["method"],
            buckets=COUNTER_ERROR_BUCKETS_TICKS,
            registry=None,
        )

    def observe_ended(self) -> None:
        """Count every migration that ended since the last call, once."""
        for record in list(self.cluster.migrations.values()):
            if not record.phase.terminal or record.migration_id in self._observed:
                continue
            self._observed.add(record.migration_id)
            method = method_label(record)
            result = outcome(record)
            self.migrations.labels(method, result).inc()
            if result == "succeeded":
                self.downtime.labels(method).observe(record.downtime_us() / 1e6)
            if record.counter_error_ticks is not None:
                self.counter_error.labels(method).observe(abs(record.counter_error_ticks))

    def describe(self) -> Iterable[Metric]:
        return []  # names come from collect(); nothing is read at registration

    def collect(self) -> Iterable[Metric]:
        self.observe_ended()
        yield from self.migrations.collect()
        yield from self.downtime.collect()
        yield from self.counter_error.collect()
        c = self.cluster
        nodes_up = GaugeMetricFamily("kvmtimer_controller_nodes_up", "Registered nodes passing health checks")
        nodes_up.add_metric([], sum(1 for n in c.nodes.values() if n.healthy))
        yield nodes_up
        nodes = GaugeMetricFamily("kvmtimer_controller_nodes", "Registered nodes")
        nodes.add_metric([], len(c.nodes))
        yield nodes
        guests = GaugeMetricFamily("kvmtimer_controller_guests", "Guests")
        guests.add_metric([], len(c.guests))
        yield guests
        lost = GaugeMetricFamily(
            "kvmtimer_controller_guests_lost", "Guests lost with a crashed host (listed until destroyed)"
        )
        lost.add_metric([], sum(1 for g in c.guests.values() if g.state is GuestState.LOST))
        yield lost
        orphans = GaugeMetricFamily(
            "kvmtimer_controller_orphan_vms",
            "VMs on the nodes that belong to no known guest (never destroyed)",
        )
        orphans.add_metric([], sum(len(v) for v in c.orphans.values()))
        yield orphans
        dropped = CounterMetricFamily(
            "kvmtimer_controller_telemetry_dropped",
            "Telemetry dropped: hub items a slow subscriber missed (stage=subscriber), "
            "samples a node dropped because the controller lagged (stage=node_stream)",
            labels=["stage"],
        )
        dropped.add_metric(["subscriber"], c.telemetry.dropped_total)
        dropped.add_metric(["node_stream"], c.collector.node_dropped_total)
        yield dropped
        samples = CounterMetricFamily(
            "kvmtimer_controller_telemetry_samples", "vCPU samples collected from the nodes"
        )
        samples.add_metric([], c.collector.samples_total)
        yield samples
        subscribers = GaugeMetricFamily(
            "kvmtimer_controller_telemetry_subscribers", "Telemetry hub subscribers (streams, MQTT bridge)"
        )
        subscribers.add_metric([], c.telemetry.subscribers)
        yield subscribers


class MqttMetrics(Collector):
    """The controller's MQTT telemetry, read at scrape time."""

    def __init__(self, mqtt: MqttTelemetry) -> None:
        self.mqtt = mqtt

    def collect(self) -> Iterable[Metric]:
        stats, bridge = self.mqtt.publisher.stats, self.mqtt.bridge
        published = CounterMetricFamily(
            "kvmtimer_controller_mqtt_messages", "MQTT messages handed to the broker connection"
        )
        published.add_metric([], stats.published)
        yield published
        samples = CounterMetricFamily(
            "kvmtimer_controller_mqtt_samples", "vCPU samples the MQTT bridge took from the telemetry hub"
        )
        samples.add_metric([], bridge.samples_in)
        yield samples
        dropped = CounterMetricFamily(
            "kvmtimer_controller_mqtt_dropped",
            "MQTT telemetry dropped, by reason: messages (disconnected, queue_full, send_failed, stopped) "
            "and hub items the bridge fell behind on (hub_items)",
            labels=["reason"],
        )
        for reason in (DROP_DISCONNECTED, DROP_QUEUE_FULL, DROP_SEND_FAILED, DROP_STOPPED):
            dropped.add_metric([reason], stats.dropped.get(reason, 0))
        dropped.add_metric(["hub_items"], bridge.hub_dropped)
        yield dropped
        waiting = GaugeMetricFamily(
            "kvmtimer_controller_mqtt_samples_waiting",
            "vCPU samples buffered for the next sample messages (the message budget delays them)",
        )
        waiting.add_metric([], bridge.samples.pending)
        yield waiting


def controller_registry(cluster: MetricsView) -> CollectorRegistry:
    """A registry of this cluster's metrics only (not the process-global default)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ControllerMetrics(cluster))
    return registry
