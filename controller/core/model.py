"""Inventory model: nodes and guests as the controller knows them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NewType

from controller.core.errors import InvalidArgument
from node.core.features import ClockMode, HostFeatures
from node.core.workload import WorkloadSpec

NodeId = NewType("NodeId", str)
GuestId = NewType("GuestId", str)
MigrationId = NewType("MigrationId", str)


# Guest and migration ids: what a VM id may hold, minus '@' (the VM ids' separator).
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


class GuestState(StrEnum):
    """A guest's lifecycle as persisted."""

    CREATING = "creating"  # CreateGuest journaled, not yet confirmed
    RUNNING = "running"  # runs on its node
    LOST = "lost"  # its host crashed with it
    DESTROYED = "destroyed"  # destroyed by request
    FAILED = "failed"  # creation did not complete

    @property
    def alive(self) -> bool:
        return self in (GuestState.CREATING, GuestState.RUNNING)


def check_guest_id(guest_id: str) -> GuestId:
    """InvalidArgument unless 1-64 of [A-Za-z0-9._:-], starting alphanumeric (so never '@')."""
    if not _ID.fullmatch(guest_id):
        raise InvalidArgument(
            f"guest_id {guest_id!r} must be 1-64 letters, digits, '.', '_', ':' or '-', starting with a "
            "letter or digit"
        )
    return GuestId(guest_id)


def check_migration_id(migration_id: str) -> MigrationId:
    """Like guest ids, and not only digits (creation VM ids end in '@' + a number)."""
    if not _ID.fullmatch(migration_id) or migration_id.isdigit():
        raise InvalidArgument(
            f"migration_id {migration_id!r} must be 1-64 letters, digits, '.', '_', ':' or '-', starting "
            "with a letter or digit, and not only digits"
        )
    return MigrationId(migration_id)


def creation_vm_id(guest_id: GuestId, number: int) -> str:
    """The VM a new guest starts in: `<guest>@<n>` (n from a counter never reused). Guest ids
    hold no '@', so no VM id equals a guest id or another guest's VM id."""
    return f"{guest_id}@{number}"


def migration_vm_id(guest_id: GuestId, migration_id: MigrationId) -> str:
    """The destination VM of a migration: `<guest>@<migration>` (migration ids are never digits only)."""
    return f"{guest_id}@{migration_id}"


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
    state: GuestState = GuestState.RUNNING  # lifecycle
    reason: str = ""  # why lost
    generation: int = 0  # its VM's owner generation (+1 per migration)


def node_load(node_id: NodeId, guests: list[GuestRecord]) -> int:
    """vCPUs placed on a node (the load placement spreads); lost guests weigh nothing."""
    return sum(g.vcpus for g in guests if g.node_id == node_id and g.state.alive)
