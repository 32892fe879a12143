"""Event publishing: migration events and node health to watchers (gRPC streams, MQTT, recorders)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from kvmtimer.v1 import controller_pb2 as cpb

from controller.core.migration import MigrationRecord
from controller.core.model import NodeRecord
from controller.service import convert
from controller.telemetry.hub import Hub


@dataclass(frozen=True, slots=True)
class MigrationEventRecord:
    """A phase transition or step, as published to watchers."""

    migration: MigrationRecord  # a copy of the record at that moment
    step: str  # step name, or "" for a phase change
    realtime_ns: int  # when it happened


class EventPublisher:
    """The two hubs: `events` (migration records) and `telemetry` (everything observers stream)."""

    def __init__(self) -> None:
        self.events: Hub[MigrationEventRecord] = Hub()
        # vCPU sample batches, migration events and node health, as protobuf items.
        self.telemetry: Hub[cpb.ClusterTelemetry] = Hub()

    def migration(self, record: MigrationRecord, step: str = "") -> None:
        if not (self.events.subscribers or self.telemetry.subscribers):
            return  # nobody watches: no copy (steps are published inside the guest's downtime)
        # Watchers get the record as it is now, not the live object.
        frozen = dataclasses.replace(record, steps=list(record.steps), not_carried=list(record.not_carried))
        now = time.time_ns()
        self.events.publish(MigrationEventRecord(frozen, step, now))
        if self.telemetry.subscribers:
            event = cpb.MigrationEvent(migration=convert.migration_to_pb(frozen), step=step, realtime_ns=now)
            self.telemetry.publish(cpb.ClusterTelemetry(migration=event))

    def node(self, status: cpb.NodeStatus) -> None:
        """A node's (new) status."""
        if self.telemetry.subscribers:
            self.telemetry.publish(
                cpb.ClusterTelemetry(node=cpb.NodeHealthEvent(node=status, realtime_ns=time.time_ns()))
            )

    def close(self) -> None:
        self.events.close()
        self.telemetry.close()


def node_status_of(node: NodeRecord, guests: int, vcpus: int) -> cpb.NodeStatus:
    return convert.node_status(node, guests, vcpus)
