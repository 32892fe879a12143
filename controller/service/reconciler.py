"""Reconciliation: runs controller.core.recovery's plan against the nodes.

Lists every registered node's VMs (a node that does not answer is None: nothing about
it is decided), plans, and for each resolution runs its node actions in order, then
commits its state. A resolution whose actions fail is left for the next round; each
round is idempotent (controller.core.recovery). Runs at start (after the stored nodes
are reached) and after every health round.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from controller.core.errors import NodeCallError
from controller.core.machine import VmRef
from controller.core.model import GuestId, NodeId
from controller.core.recovery import DestroyVm, GuestPlacement, NodeVm, Orphan, Plan, ResumeVm, plan

if TYPE_CHECKING:
    from controller.service.cluster import Cluster

log = structlog.get_logger("kvmtimer.controller")


async def list_nodes(cluster: Cluster) -> dict[NodeId, list[NodeVm] | None]:
    """Every registered node's VMs with their owner labels (None: the node did not answer)."""
    listings: dict[NodeId, list[NodeVm] | None] = {}
    for node_id, client in list(cluster.pool.clients.items()):
        try:
            vms = await client.list_vms()
        except NodeCallError:
            listings[node_id] = None
            continue
        listings[node_id] = [
            NodeVm(v.vm_id, v.running, v.owner.guest_id, v.owner.migration_id, v.owner.generation)
            for v in vms
        ]
    return listings


async def reconcile(cluster: Cluster) -> Plan:
    """One reconciliation round."""
    seen = _state_of(cluster)
    listings = await list_nodes(cluster)
    async with cluster.reconcile_lock:
        guests = [
            GuestPlacement(g.guest_id, VmRef(g.node_id, g.vm_id), g.state, g.generation, g.reason)
            for g in cluster.guests.values()
        ]
        # Only what did not change while the nodes were listed is judged by those lists: a guest
        # created (or moved) meanwhile has a VM the lists may predate.
        now = _state_of(cluster)
        changed = {gid for gid, state in now.items() if seen.get(gid) != state}
        decided = plan(guests, list(cluster.journals.values()), listings, busy=cluster.busy() | changed)
        for res in decided.resolutions:
            if res.waiting or not (res.actions or res.guests or res.migrations):
                continue
            if await _run_actions(cluster, res.actions, res.subject):
                cluster.apply_resolution(res)
    orphans: dict[NodeId, list[Orphan]] = {}
    for o in decided.orphans:
        orphans.setdefault(o.vm.node_id, []).append(o)
    new = {n: tuple(v) for n, v in orphans.items()}
    if new != cluster.orphans:
        for o in decided.orphans:
            if o not in cluster.orphans.get(o.vm.node_id, ()):
                log.warning("orphan_vm", node_id=o.vm.node_id, vm_id=o.vm.vm_id, owner_guest_id=o.guest_id)
        cluster.orphans = new
    return decided


def _state_of(cluster: Cluster) -> dict[GuestId, tuple[object, ...]]:
    """Each guest's placement, lifecycle and journal step, to see what changed meanwhile."""
    return {
        g.guest_id: (
            g.node_id,
            g.vm_id,
            g.state,
            g.migrating,
            cluster.journals[g.migrating].step if g.migrating in cluster.journals else None,
        )
        for g in cluster.guests.values()
    }


async def _run_actions(cluster: Cluster, actions: tuple[ResumeVm | DestroyVm, ...], subject: str) -> bool:
    for action in actions:
        client = cluster.pool.clients.get(action.vm.node_id)
        if client is None:
            return False
        try:
            if isinstance(action, ResumeVm):
                await client.resume(action.vm.vm_id)
            else:
                await client.destroy_vm(action.vm.vm_id)
        except NodeCallError as err:
            if isinstance(action, DestroyVm) and err.code == "NOT_FOUND" and err.errno_name is None:
                continue  # already gone
            log.info("reconcile_action_failed", subject=subject, action=repr(action), error=err.message)
            return False
        log.info(
            "reconcile_action",
            subject=subject,
            action=type(action).__name__,
            node_id=action.vm.node_id,
            vm_id=action.vm.vm_id,
            why=getattr(action, "why", ""),
        )
    return True
