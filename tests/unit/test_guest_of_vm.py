"""Telemetry: which guest a node's VM belongs to, looked up by the VM's name (no inventory scan).

Edge cases: a guest's VM at creation (`guest@n`); after a move (`guest@migration`); the
destination VM of a migration in flight to that node, and not once the migration ended or on
another node; a VM named exactly like a guest (never one of the controller's: guest ids hold no
'@'); a VM that is no guest's; the same name on the wrong node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from controller.core.migration import Method, MigrationRecord, Phase
from controller.core.model import GuestId, GuestRecord, MigrationId, NodeId
from controller.telemetry.collector import guest_of_vm
from controller.telemetry.view import ClusterView
from node.core.workload import WorkloadSpec


@dataclass
class _Inventory:
    guests: dict[GuestId, GuestRecord] = field(default_factory=dict)
    migrations: dict[MigrationId, MigrationRecord] = field(default_factory=dict)


def guest(guest_id: str, node: str, vm_id: str) -> GuestRecord:
    return GuestRecord(GuestId(guest_id), NodeId(node), vm_id, 1, WorkloadSpec(250_000))


def migration(mid: str, guest_id: str, destination: str, phase: Phase) -> MigrationRecord:
    m = MigrationRecord(MigrationId(mid), GuestId(guest_id), NodeId("a"), NodeId(destination), Method.AUTO)
    m.phase = phase
    return m


def test_guest_of_vm() -> None:
    inv = _Inventory()
    for g in (
        guest("g1", "a", "g1@1"),
        guest("g2", "b", "g2@mig-1"),
        guest("g3", "a", "g3@3"),
    ):
        inv.guests[g.guest_id] = g
    for m in (migration("mig-1", "g2", "b", Phase.SUCCEEDED), migration("mig-2", "g3", "c", Phase.RUNNING)):
        inv.migrations[m.migration_id] = m
    view = cast(ClusterView, inv)
    assert guest_of_vm(view, NodeId("a"), "g1@1") == "g1"
    assert guest_of_vm(view, NodeId("b"), "g1@1") == ""  # same name, wrong node
    assert guest_of_vm(view, NodeId("a"), "g1") == ""  # named like the guest: not its VM
    assert guest_of_vm(view, NodeId("a"), "g1@2") == ""  # another number: not its VM
    assert guest_of_vm(view, NodeId("b"), "g2@mig-1") == "g2"  # moved onto it
    assert guest_of_vm(view, NodeId("c"), "g3@mig-2") == "g3"  # migration in flight to c
    assert guest_of_vm(view, NodeId("b"), "g3@mig-2") == ""  # not its destination
    inv.migrations[MigrationId("mig-2")].phase = Phase.FAILED
    assert guest_of_vm(view, NodeId("c"), "g3@mig-2") == ""  # ended without moving the guest
    assert guest_of_vm(view, NodeId("a"), "vm-7") == ""
    assert guest_of_vm(view, NodeId("a"), "nobody@mig-9") == ""
