"""What the controller's telemetry reads of the cluster: a narrow, read-only view.

`controller.service.cluster.Cluster` satisfies it; telemetry never imports the service
layer (the import contracts in pyproject.toml enforce it), so the cluster can own its
collector without an import cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from kvmtimer.v1 import controller_pb2 as cpb

from controller.clients.node import NodeClient
from controller.core.migration import MigrationRecord
from controller.core.model import GuestId, GuestRecord, MigrationId, NodeId, NodeRecord
from controller.core.recovery import Orphan
from controller.telemetry.hub import Hub


class ClusterView(Protocol):
    """Inventory, node connections and the telemetry hub of one cluster."""

    @property
    def telemetry(self) -> Hub[cpb.ClusterTelemetry]: ...  # where collected items are published

    @property
    def nodes(self) -> Mapping[NodeId, NodeRecord]: ...  # registered nodes

    @property
    def clients(self) -> Mapping[NodeId, NodeClient]: ...  # one connection per registered node

    @property
    def guests(self) -> Mapping[GuestId, GuestRecord]: ...  # placed guests

    @property
    def migrations(self) -> Mapping[MigrationId, MigrationRecord]: ...  # every migration so far

    @property
    def orphans(self) -> Mapping[NodeId, tuple[Orphan, ...]]: ...  # VMs no known guest owns, by node
