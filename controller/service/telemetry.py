"""The controller's MQTT telemetry wired to a Cluster: its hub and its node statuses."""

from __future__ import annotations

from kvmtimer.v1 import controller_pb2 as cpb

from controller.service import convert
from controller.service.cluster import Cluster
from controller.telemetry.bridge import (
    DEFAULT_FLUSH_INTERVAL_S,
    DEFAULT_STATUS_INTERVAL_S,
    MqttTelemetry,
    start_mqtt_telemetry,
)
from node.runtime.mqtt import MqttSettings


def node_statuses(cluster: Cluster) -> list[cpb.NodeStatus]:
    return [convert.node_status(n, *cluster.load(n.node_id)) for n in cluster.nodes.values()]


def start_controller_telemetry(
    cluster: Cluster,
    settings: MqttSettings,
    *,
    address: str = "",
    flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
    status_interval_s: float = DEFAULT_STATUS_INTERVAL_S,
) -> MqttTelemetry:
    """Start publishing `cluster.telemetry` (subscribed before this returns) to the broker.

    The broker may be down: the publisher keeps reconnecting and the cluster never waits.
    """
    return start_mqtt_telemetry(
        cluster.telemetry,
        settings,
        nodes=lambda: node_statuses(cluster),
        address=address,
        flush_interval_s=flush_interval_s,
        status_interval_s=status_interval_s,
    )
