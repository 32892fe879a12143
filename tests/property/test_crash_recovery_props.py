"""Model-based: any interleaving of controller crashes, node crashes, lost answers and
restarts ends consistent (controller.core.machine + controller.core.recovery, fake nodes).

The controller model keeps only what it committed (guests, the migration journal) across
its crashes; it commits each journal step before running that step's command, exactly as
the executor must. Nodes are fakes that hold labelled VMs; a node crash takes its VMs.
After the run every node comes back and reconciliation runs until settled. Invariants:
- at no moment does a guest run on two nodes
- every guest not lost runs exactly once, at its recorded placement, never paused
- a guest is lost only if some node holding it crashed
- no VM the controller created is left behind (no orphan of ours); a foreign VM is never touched
- no migration stays in flight
- no guest counter ever went backwards, no guest runs from a VM never restored (every step and the end)
- reconciliation is idempotent: once settled, planning again changes nothing
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.core import machine as m
from controller.core.machine import Command, Journal, Outcome, Result, VmRef, advance, start
from controller.core.migration import Step
from controller.core.model import GuestId, GuestState, MigrationId, NodeId
from controller.core.recovery import (
    DestroyVm,
    GuestPlacement,
    NodeVm,
    ResumeVm,
    plan,
)

Snap = tuple[int, int]  # (guest counter, when read)
NODES = (NodeId("a"), NodeId("b"), NodeId("c"))
FOREIGN = VmRef(NodeId("a"), "made-by-hand")


@dataclass
class FakeVm:
    running: bool
    guest_id: str
    migration_id: str
    generation: int
    offset: int = 0  # guest counter = now - offset
    complete: bool = True  # holds the whole guest (a migration's destination: once restored)


@dataclass
class FakeNode:
    vms: dict[str, FakeVm] = field(default_factory=dict)
    up: bool = True


class Unreachable(Exception):
    pass


class Missing(Exception):
    pass


@dataclass
class World:
    nodes: dict[NodeId, FakeNode]
    now: int = 1000
    # persisted by the controller
    guests: dict[GuestId, GuestPlacement] = field(default_factory=dict)
    journals: dict[MigrationId, Journal] = field(default_factory=dict)
    next_id: int = 1
    # in memory only (lost by a controller crash): guest -> (journal id, pending command, snapshot)
    active: dict[GuestId, tuple[MigrationId, Command, Snap | None]] = field(default_factory=dict)
    creating: dict[GuestId, int] = field(default_factory=dict)  # guest -> sub-step done
    crashed_with: set[GuestId] = field(default_factory=set)  # guests on a node that crashed
    high_water: dict[str, int] = field(default_factory=dict)  # guest -> largest counter seen
    foreign_gone: bool = False  # the hand-made VM's host crashed

    def node(self, node_id: NodeId) -> FakeNode:
        n = self.nodes[node_id]
        if not n.up:
            raise Unreachable(node_id)
        return n

    def vm(self, ref: VmRef) -> FakeVm:
        try:
            return self.node(ref.node_id).vms[ref.vm_id]
        except KeyError:
            raise Missing(ref) from None

    def listing(self) -> dict[NodeId, tuple[NodeVm, ...] | None]:
        return {
            n: None
            if not node.up
            else tuple(
                NodeVm(k, v.running, v.guest_id, v.migration_id, v.generation) for k, v in node.vms.items()
            )
            for n, node in self.nodes.items()
        }

    def observe(self) -> None:
        """Every running copy of a guest: at most one, and its counter never behind."""
        running: dict[str, int] = {}
        for node in self.nodes.values():
            for vm in node.vms.values():
                if vm.running and vm.guest_id and vm.guest_id != "foreign":
                    assert vm.guest_id not in running, f"guest {vm.guest_id} runs twice"
                    assert vm.complete, f"guest {vm.guest_id} runs from a VM never restored"
                    running[vm.guest_id] = self.now - vm.offset
        for gid, counter in running.items():
            assert counter >= self.high_water.get(gid, 0), f"guest {gid} counter went backwards"
            self.high_water[gid] = counter


def fresh_world() -> World:
    w = World({n: FakeNode() for n in NODES})
    w.nodes[FOREIGN.node_id].vms[FOREIGN.vm_id] = FakeVm(True, "foreign", "", 0)
    return w


# --- controller operations ----------------------------------------------------------


def create_guest(w: World, node_id: NodeId) -> None:
    gid = GuestId(f"guest-{w.next_id}")
    w.next_id += 1
    w.guests[gid] = GuestPlacement(gid, VmRef(node_id, f"{gid}@0"), GuestState.CREATING)
    w.creating[gid] = 0


def creation_step(w: World, gid: GuestId, lose_answer: bool) -> None:
    g = w.guests[gid]
    done = w.creating[gid]
    try:
        if done == 0:
            w.node(g.vm.node_id).vms[g.vm.vm_id] = FakeVm(False, gid, "", 0, offset=w.now)
        else:
            w.vm(g.vm).running = True
    except (Unreachable, Missing):
        # Creation failed: undo what it made (best effort) and keep the id taken.
        try:
            w.node(g.vm.node_id).vms.pop(g.vm.vm_id, None)
            w.guests[gid] = replace(g, state=GuestState.FAILED)
        except Unreachable:
            pass  # left CREATING: reconciliation decides
        del w.creating[gid]
        return
    if lose_answer:
        return  # the effect happened, the answer was lost: retried on the next step
    if done == 0:
        w.creating[gid] = 1
    else:
        w.guests[gid] = replace(g, state=GuestState.RUNNING)
        del w.creating[gid]


def start_migration(w: World, gid: GuestId, dst_node: NodeId) -> None:
    g = w.guests[gid]
    if g.state is not GuestState.RUNNING or gid in w.active or dst_node == g.vm.node_id:
        return
    if any(j.guest_id == gid and j.outcome is Outcome.IN_FLIGHT for j in w.journals.values()):
        return  # held in doubt: reconciliation must decide first
    mid = MigrationId(f"mig-{w.next_id}")
    w.next_id += 1
    j, cmd = start(Journal(mid, gid, g.vm, VmRef(dst_node, f"{gid}@{mid}"), g.generation + 1))
    w.journals[mid] = j  # committed before the command is sent
    w.active[gid] = (mid, cmd, None)


def run_command(w: World, cmd: Command, snap: Snap | None, stall: int) -> tuple[Result, Snap | None]:
    """Execute one command against the fake nodes."""
    try:
        match cmd:
            case m.Prepare(source=_, destination=dst, guest_id=gid, migration_id=mid, generation=gen):
                node = w.node(dst.node_id)
                if dst.vm_id not in node.vms:
                    node.vms[dst.vm_id] = FakeVm(False, gid, mid, gen, complete=False)
            case m.Pause(vm=ref):
                w.vm(ref).running = False
            case m.Snapshot(vm=ref):
                vm = w.vm(ref)
                assert not vm.running
                snap = (w.now - vm.offset, w.now)  # the guest counter read at the pause, and when
            case m.Transfer():
                pass
            case m.Resume(vm=ref):
                # One batch: restore, then resume; it fails as a whole (a missing VM: nothing done).
                assert snap is not None
                vm = w.vm(ref)
                # Offset methods carry the counter on in real time; BY_VALUE (stall > 0) writes
                # the value read at the pause, so guest time stalls for the downtime.
                counter, read_at = snap
                elapsed = 0 if stall else w.now - read_at
                vm.offset = w.now - (counter + elapsed)
                vm.complete = True
                vm.running = True
            case m.Cleanup(vm=ref, destination=dst):
                if not w.vm(dst).running:
                    return Result.FAILED, snap
                w.node(ref.node_id).vms.pop(ref.vm_id, None)
            case m.Rollback(destroy=dst, resume=src):
                failed = False
                if dst is not None:
                    try:
                        w.node(dst.node_id).vms.pop(dst.vm_id, None)
                    except Unreachable:
                        failed = True
                if src is not None:
                    try:
                        w.vm(src).running = True
                    except (Unreachable, Missing):
                        failed = True
                return (Result.FAILED if failed else Result.OK), snap
    except Unreachable:
        return Result.UNREACHABLE, snap
    except Missing:
        return Result.FAILED, snap
    return Result.OK, snap


def migration_step(w: World, gid: GuestId, lose_answer: bool, stall: int) -> None:
    mid, cmd, snap = w.active[gid]
    j = w.journals[mid]
    result, snap = run_command(w, cmd, snap, stall)
    if lose_answer and result is Result.OK and not isinstance(cmd, m.Transfer):
        result = Result.UNREACHABLE
    j, nxt = advance(j, result)
    w.journals[mid] = j  # commit before sending `nxt`
    if j.step is Step.CLEANUP and j.outcome is Outcome.IN_FLIGHT:
        g = w.guests[gid]
        w.guests[gid] = replace(g, vm=j.destination, generation=j.generation)
    if j.step is Step.ROLLBACK and w.guests[gid].vm == j.destination:
        w.guests[gid] = replace(w.guests[gid], vm=j.source, generation=j.generation - 1)
    if isinstance(nxt, (m.Finish, m.Hold)):
        del w.active[gid]
    else:
        w.active[gid] = (mid, nxt, snap)


def reconcile(w: World) -> bool:
    """One reconciliation round; True when it had nothing left to do."""
    p = plan(
        list(w.guests.values()), list(w.journals.values()), w.listing(), busy=set(w.active) | set(w.creating)
    )
    for o in p.orphans:
        assert o.vm == FOREIGN, f"orphan of ours: {o}"
    idle = True
    for r in p.resolutions:
        if r.waiting:
            idle = False
            continue
        ok = True
        for action in r.actions:
            idle = False
            try:
                if isinstance(action, ResumeVm):
                    w.vm(action.vm).running = True
                elif isinstance(action, DestroyVm):
                    assert action.vm != FOREIGN
                    w.node(action.vm.node_id).vms.pop(action.vm.vm_id, None)
            except (Unreachable, Missing):
                ok = False
                break
        if ok:
            for g in r.guests:
                if w.guests[g.guest_id] != g:
                    idle = False
                w.guests[g.guest_id] = g
            for j in r.migrations:
                idle = False
                w.journals[j.migration_id] = j
    return idle


def crash_controller(w: World) -> None:
    w.active.clear()
    w.creating.clear()


def crash_node(w: World, node_id: NodeId, stays_down: bool) -> None:
    node = w.nodes[node_id]
    for vm in node.vms.values():
        if vm.guest_id in w.guests:
            w.crashed_with.add(GuestId(vm.guest_id))
    if FOREIGN.vm_id in node.vms and node_id == FOREIGN.node_id:
        w.foreign_gone = True
    node.vms.clear()
    node.up = not stays_down


# --- the property -------------------------------------------------------------------

node_ids = st.sampled_from(NODES)
ops = st.one_of(
    st.tuples(st.just("create"), node_ids),
    st.tuples(st.just("migrate"), st.integers(1, 12), node_ids),
    st.tuples(st.just("step"), st.integers(0, 11), st.booleans(), st.integers(0, 3)),
    st.tuples(st.just("crash_controller")),
    st.tuples(st.just("crash_node"), node_ids, st.booleans()),
    st.tuples(st.just("down"), node_ids),
    st.tuples(st.just("up"), node_ids),
    st.tuples(st.just("reconcile")),
    st.tuples(st.just("tick"), st.integers(1, 50)),
)


def apply(w: World, op: tuple[object, ...]) -> None:
    kind = op[0]
    if kind == "create":
        create_guest(w, NodeId(str(op[1])))
    elif kind == "migrate":
        gid = GuestId(f"guest-{op[1]}")
        if gid in w.guests:
            start_migration(w, gid, NodeId(str(op[2])))
    elif kind == "step":
        busy = sorted([*w.active, *w.creating])
        if busy:
            gid = busy[int(str(op[1])) % len(busy)]
            lose = bool(op[2])
            if gid in w.creating:
                creation_step(w, gid, lose)
            else:
                migration_step(w, gid, lose, int(str(op[3])))
    elif kind == "crash_controller":
        crash_controller(w)
    elif kind == "crash_node":
        crash_node(w, NodeId(str(op[1])), bool(op[2]))
    elif kind == "down":
        w.nodes[NodeId(str(op[1]))].up = False
    elif kind == "up":
        w.nodes[NodeId(str(op[1]))].up = True
    elif kind == "reconcile":
        reconcile(w)
    elif kind == "tick":
        w.now += int(str(op[1]))


def settle(w: World) -> None:
    """Every node back, the controller restarted, reconciliation until nothing is left to do."""
    for node in w.nodes.values():
        node.up = True
    crash_controller(w)
    for _ in range(5):
        w.now += 1
        if reconcile(w):
            break
        w.observe()
    else:
        raise AssertionError("reconciliation did not settle")


def check_consistent(w: World) -> None:
    w.observe()
    assert all(j.outcome is not Outcome.IN_FLIGHT for j in w.journals.values()), "migration in flight"
    copies: dict[str, list[tuple[VmRef, FakeVm]]] = {}
    for node_id, node in w.nodes.items():
        for vm_id, vm in node.vms.items():
            copies.setdefault(vm.guest_id, []).append((VmRef(node_id, vm_id), vm))
    foreign = [] if w.foreign_gone else [FOREIGN]
    assert [ref for ref, _ in copies.pop("foreign", [])] == foreign, "foreign VM touched"
    for gid, g in w.guests.items():
        mine = copies.pop(gid, [])
        if g.state is GuestState.RUNNING:
            assert [ref for ref, _ in mine] == [g.vm], f"{gid} must run exactly once at {g.vm}: {mine}"
            assert mine[0][1].running, f"{gid} left paused"
        else:
            assert mine == [], f"{gid} ({g.state}) left VMs behind: {mine}"
            assert g.state is not GuestState.CREATING
        if g.state is GuestState.LOST:
            assert gid in w.crashed_with, f"{gid} lost without a host crash"
    assert copies == {}, f"VMs of unknown guests: {copies}"
    # Idempotent: planning again decides nothing.
    again = plan(list(w.guests.values()), list(w.journals.values()), w.listing())
    assert again.settled and [o.vm for o in again.orphans] == foreign


@settings(max_examples=400, deadline=None)
@given(st.lists(ops, max_size=60))
def test_any_interleaving_of_crashes_ends_consistent(script: list[tuple[object, ...]]) -> None:
    w = fresh_world()
    for op in script:
        apply(w, op)
        w.observe()
    settle(w)
    check_consistent(w)


@settings(max_examples=200, deadline=None)
@given(
    n_steps=st.integers(0, 8),
    victim=st.sampled_from(["controller", "source", "destination"]),
    lose_answer=st.booleans(),
)
def test_one_migration_killed_at_any_step(n_steps: int, victim: str, lose_answer: bool) -> None:
    """The campaign's shape on the model: a migration, a victim killed at a step, restart, check."""
    w = fresh_world()
    create_guest(w, NodeId("b"))
    gid = GuestId("guest-1")
    creation_step(w, gid, False)
    creation_step(w, gid, False)
    start_migration(w, gid, NodeId("c"))
    for _ in range(n_steps):
        if gid in w.active:
            migration_step(w, gid, lose_answer, 2)
            w.observe()
    j = next(iter(w.journals.values()))
    source_copy = j.source.vm_id in w.nodes[j.source.node_id].vms
    if victim == "controller":
        crash_controller(w)
    else:
        crash_node(w, (j.source if victim == "source" else j.destination).node_id, stays_down=False)
    settle(w)
    check_consistent(w)
    g = w.guests[gid]
    if victim == "controller" or (victim == "destination" and source_copy):
        assert g.state is GuestState.RUNNING  # a complete copy survived: the guest must too
