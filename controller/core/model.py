"""Inventory model: nodes and guests as the controller knows them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NewType

from node.core.features import ClockMode, HostFeatures
from node.core.workload import WorkloadSpec

NodeId = NewType("NodeId", str)
GuestId = NewType("GuestId", str)
MigrationId = NewType("MigrationId", str)


@dataclass(slots=True)
class NodeRecord:
    """One registered node."""

    node_id: NodeId  # name in the cluster
    address: str  # HOST:PORT of its Node service
    features: HostFeatures  # what its host offers
    clock_mode: ClockMode  # realtime or simulated
    healthy: bool = True  # last health check passed
    last_error: str = ""  # why it was marked down


@dataclass(slots=True)
class GuestRecord:
    """One guest: a VM with a workload, living on exactly one node."""

    guest_id: GuestId  # cluster-wide name
    node_id: NodeId  # where it runs now
    vm_id: str  # its VM on that node
    vcpus: int  # vCPU count
    workload: WorkloadSpec  # the guest program
    migrating: MigrationId | None = None  # migration in flight
    migrations: int = 0  # completed moves
    history: list[NodeId] = field(default_factory=list)  # nodes it lived on


def node_load(node_id: NodeId, guests: list[GuestRecord]) -> int:
    """vCPUs placed on a node (the load placement spreads)."""
    return sum(g.vcpus for g in guests if g.node_id == node_id)
