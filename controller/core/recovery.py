"""Reconciliation: the controller's persisted state against what the nodes run. Pure.

Nodes are the truth for what runs: each VM the controller creates carries its owner
(guest id, migration id, generation; node ListVms). Given the persisted guests and
migrations and each node's VM list (None: the node did not answer), `plan()` returns
one `Resolution` per subject: the node actions to run, in order, and the state to
commit once they all succeeded. A resolution whose actions fail is simply planned
again later: every rule depends only on the journal and the nodes' answers, so a
crash anywhere during recovery, followed by another recovery, gives the same result.

Rules (issue #11):
- An in-flight migration journaled before RESUME rolls back (destroy the destination
  VM, then resume the source). At RESUME the destination was possibly sent its one
  restore-and-resume batch, which resumes last: its VM runs -> roll forward (destroy
  the source); present but not running, or absent -> roll back. At CLEANUP the
  destination had answered that it runs the guest: its VM present -> roll forward
  (resumed if paused). A copy that a crashed host took with it cannot be used: the
  other copy is used if it is complete (the source always is; the destination once it
  ran); with neither the guest is lost. Rolling back destroys the destination VM
  before the source is resumed, so a guest never runs on two nodes.
- A guest whose node answers without its VM is lost (a host crash takes its VMs);
  it is never recreated. A paused current VM is resumed (a guest is never left paused).
- A guest being created when the controller stopped is adopted if its VM runs
  (creation got to its last call), otherwise its VM is destroyed and the creation failed.
- A VM labelled with a known guest that is no guest's current VM (a leftover of a
  finished migration or a destroyed guest) is destroyed; a VM labelled with no known
  guest (or an unknown migration) is reported as an orphan and never touched.
- Nothing is decided about a node that does not answer: its subjects wait.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace

from controller.core.machine import Journal, OnVm, Outcome, VmRef, destination_ran, told_to_resume
from controller.core.model import GuestId, GuestState, MigrationId, NodeId


@dataclass(frozen=True, slots=True)
class GuestPlacement:
    """What is persisted about one guest's whereabouts."""

    guest_id: GuestId  # never reused
    vm: VmRef  # its current VM
    state: GuestState  # lifecycle
    generation: int = 0  # its current VM's owner generation
    reason: str = ""  # why lost or failed


@dataclass(frozen=True, slots=True)
class NodeVm:
    """One VM as a node lists it (ListVms)."""

    vm_id: str  # the node's id for it
    running: bool  # resumed
    guest_id: str = ""  # owner label
    migration_id: str = ""  # owner label
    generation: int = 0  # owner label


@dataclass(frozen=True, slots=True)
class ResumeVm(OnVm):
    """Resume the paused VM `vm` (idempotent on the node)."""


@dataclass(frozen=True, slots=True)
class DestroyVm(OnVm):
    """Destroy the VM `vm` the controller created (NOT_FOUND counts as done)."""

    why: str


NodeAction = ResumeVm | DestroyVm


@dataclass(frozen=True, slots=True)
class Orphan:
    """A VM that belongs to no known guest: shown, never destroyed."""

    vm: VmRef
    guest_id: str  # its owner label (may be empty: created by hand)
    migration_id: str


@dataclass(frozen=True, slots=True)
class Resolution:
    """Run `actions` in order; when all succeeded, commit `guests` and `migrations`."""

    subject: str  # "guest g", "migration m", "vm node/vm"
    actions: tuple[NodeAction, ...] = ()
    guests: tuple[GuestPlacement, ...] = ()
    migrations: tuple[Journal, ...] = ()
    waiting: str = ""  # non-empty: nothing decided, a node did not answer


@dataclass(frozen=True, slots=True)
class Plan:
    """Every resolution, plus the orphans seen."""

    resolutions: tuple[Resolution, ...] = ()
    orphans: tuple[Orphan, ...] = ()
    # vm refs that some live guest or in-flight migration still needs
    needed: frozenset[VmRef] = field(default_factory=frozenset)

    @property
    def settled(self) -> bool:
        """Nothing to do and nothing waiting."""
        return all(
            not r.actions and not r.waiting and not r.guests and not r.migrations for r in self.resolutions
        )


NodeLists = Mapping[NodeId, Sequence[NodeVm] | None]


def _find(nodes: NodeLists, vm: VmRef) -> NodeVm | bool | None:
    """The listed VM, None when the node answered without it, False when the node did not answer."""
    listed = nodes.get(vm.node_id)
    if listed is None:
        return False
    return next((v for v in listed if v.vm_id == vm.vm_id), None)


def plan(
    guests: Sequence[GuestPlacement],
    migrations: Sequence[Journal],
    nodes: NodeLists,
    *,
    busy: Collection[GuestId] = (),
) -> Plan:
    """The reconciliation of persisted state with the nodes' lists (see the module doc).

    `busy`: guests this controller is creating or migrating right now; they are left
    alone (their VMs, and their migrations' destination VMs, count as needed).
    """
    by_guest = {g.guest_id: g for g in guests}
    known_migrations = {m.migration_id for m in migrations}
    in_flight = {m.guest_id: m for m in migrations if m.outcome is Outcome.IN_FLIGHT}
    resolutions: list[Resolution] = []
    needed: set[VmRef] = set()

    for guest in guests:
        journal = in_flight.get(guest.guest_id)
        if guest.guest_id in busy:
            needed.add(guest.vm)
            if journal is not None:
                needed.update((journal.source, journal.destination))
            continue
        if journal is not None:
            res = _resolve_migration(guest, journal, nodes)
            if res.waiting:
                needed.update((journal.source, journal.destination))
        else:
            res = _resolve_guest(guest, nodes)
            if res.waiting:
                needed.add(guest.vm)
        resolutions.append(res)
        for g in res.guests:
            if g.state.alive:
                needed.add(g.vm)
        if not res.guests and guest.state.alive and not res.waiting:
            needed.add(guest.vm)

    orphans: list[Orphan] = []
    for node_id, listed in sorted(nodes.items()):
        for vm in listed or ():
            ref = VmRef(node_id, vm.vm_id)
            if ref in needed:
                continue
            ours = GuestId(vm.guest_id) in by_guest and (
                not vm.migration_id or MigrationId(vm.migration_id) in known_migrations
            )
            if not ours:
                orphans.append(Orphan(ref, vm.guest_id, vm.migration_id))
                continue
            if _touched(resolutions, ref):
                continue
            resolutions.append(
                Resolution(
                    f"vm {node_id}/{vm.vm_id}", actions=(DestroyVm(ref, "leftover of a finished operation"),)
                )
            )
    return Plan(tuple(resolutions), tuple(orphans), frozenset(needed))


def _touched(resolutions: Sequence[Resolution], ref: VmRef) -> bool:
    return any(a.vm == ref for r in resolutions for a in r.actions)


def _resolve_guest(guest: GuestPlacement, nodes: NodeLists) -> Resolution:
    subject = f"guest {guest.guest_id}"
    if not guest.state.alive:
        return Resolution(subject)
    found = _find(nodes, guest.vm)
    if found is False:
        return Resolution(subject, waiting=f"node {guest.vm.node_id} does not answer")
    if found is None:
        if guest.state is GuestState.CREATING:
            return Resolution(
                subject,
                guests=(replace(guest, state=GuestState.FAILED, reason="creation interrupted"),),
            )
        lost = replace(
            guest, state=GuestState.LOST, reason=f"node {guest.vm.node_id} no longer has VM {guest.vm.vm_id}"
        )
        return Resolution(subject, guests=(lost,))
    assert isinstance(found, NodeVm)
    if guest.state is GuestState.CREATING:
        if found.running:
            return Resolution(subject, guests=(replace(guest, state=GuestState.RUNNING),))
        # Creation stopped before its last call (resume): the VM may lack vCPUs or its program.
        failed = replace(guest, state=GuestState.FAILED, reason="creation interrupted")
        return Resolution(subject, actions=(DestroyVm(guest.vm, "unfinished creation"),), guests=(failed,))
    if not found.running:
        return Resolution(subject, actions=(ResumeVm(guest.vm),))
    return Resolution(subject)


def _resolve_migration(guest: GuestPlacement, j: Journal, nodes: NodeLists) -> Resolution:
    subject = f"migration {j.migration_id}"
    src, dst = _find(nodes, j.source), _find(nodes, j.destination)
    if told_to_resume(j.step):
        if dst is False:
            return Resolution(subject, waiting=f"destination {j.destination.node_id} does not answer")
        # The destination's VM is complete only if it ran: its batch restores, then resumes.
        if isinstance(dst, NodeVm) and (dst.running or destination_ran(j.step)):
            actions: list[NodeAction] = []
            if not dst.running:
                actions.append(ResumeVm(j.destination))
            if src is not None and src is not False:
                actions.append(DestroyVm(j.source, "source of a migration rolled forward"))
            moved = replace(guest, vm=j.destination, state=GuestState.RUNNING, generation=j.generation)
            done = replace(j, outcome=Outcome.SUCCEEDED, reason="rolled forward after a restart")
            return Resolution(subject, tuple(actions), (moved,), (done,))
    # Roll back: before RESUME, at RESUME when the destination does not run the guest (its
    # batch failed or was never sent), or later when the destination's host lost the VM.
    if src is False:
        return Resolution(subject, waiting=f"source {j.source.node_id} does not answer")
    actions = []
    if dst is not None and dst is not False:
        actions.append(DestroyVm(j.destination, "destination of a migration rolled back"))
    if src is None:
        lost = replace(
            guest, state=GuestState.LOST, reason=f"node {j.source.node_id} no longer has VM {j.source.vm_id}"
        )
        done = replace(j, outcome=Outcome.LOST, reason=lost.reason)
        return Resolution(subject, tuple(actions), (lost,), (done,))
    assert isinstance(src, NodeVm)
    if not src.running:
        actions.append(ResumeVm(j.source))
    why = (
        "rolled back after a restart"
        if not destination_ran(j.step)
        else "destination host lost the VM; rolled back"
    )
    back = replace(guest, vm=j.source, state=GuestState.RUNNING)
    done = replace(j, outcome=Outcome.ROLLED_BACK, reason=why)
    return Resolution(subject, tuple(actions), (back,), (done,))
