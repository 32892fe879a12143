"""A controller restarted on its state file (in-process nodes, simulated clock).

Edge cases covered:
- restart: every guest is listed again where it runs, nothing on any node is destroyed or
  created, new guests and migrations get ids never used before, and a guest named like a VM
  cannot exist ('@' is refused)
- a controller killed at every migration step (after the step is journaled, before its command
  is sent): up to RESUME the guest is back on its source (destination VM gone; at RESUME the
  restore-and-resume batch was never sent, so the destination does not run), at CLEANUP it runs
  on the destination (source VM gone); never
  paused, never on two nodes, its counter never behind what it was; the record says how
  (recovered = rolled_back / rolled_forward) and is no longer in flight
- recovery twice (a crash during recovery) gives the same result
- the destination's restore-and-resume batch unanswered (in doubt): the migration is held, in
  flight, and reconciliation asks the destination: the batch ran (VM running) -> rolled forward;
  it never arrived (VM paused, not restored) -> rolled back to the source; never on two nodes
- a node whose host crashed (it answers, empty): its guests are lost, visibly (ListGuests state
  and reason, NodeStatus.lost_guests, a node telemetry event, the guests_lost metric), not
  recreated; the node is healthy again
- a VM no known guest owns is reported as an orphan (ListNodes) and never destroyed
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest
from kvmtimer.v1 import controller_pb2 as cpb
from kvmtimer.v1 import node_pb2 as pb
from prometheus_client import generate_latest

from controller.core.errors import InvalidArgument, NodeCallError
from controller.core.machine import PIPELINE
from controller.core.migration import Method, MigrationRecord, Phase, Step
from controller.core.model import GuestState, NodeId
from controller.core.recovery import NodeVm
from controller.service.cluster import Cluster
from controller.service.executor import FaultHook
from controller.service.reconciler import reconcile
from controller.telemetry.metrics import controller_registry
from node.core.features import ApiProfile, EcvLevel, HostFeatures
from node.core.uapi import OneReg
from node.core.workload import WorkloadSpec
from tests.support.cluster import CNTFRQ, SimCluster, controller_stub, sim_cluster

FEATURES = HostFeatures(
    cntfrq_hz=CNTFRQ, ecv=EcvLevel.CNTPOFF, vhe=True, api_profile=ApiProfile.VM_COUNTER_OFFSET
)
NODES = [("a", FEATURES), ("b", FEATURES)]
WORKLOAD = WorkloadSpec(period_ticks=CNTFRQ // 100)


def node_vms(sim: SimCluster) -> dict[str, dict[str, bool]]:
    """node -> {vm_id: running}, from the nodes themselves."""
    return {n: {v: vm.running for v, vm in node.host.vms.items()} for n, node in sim.nodes.items()}


def guest_counter(sim: SimCluster, node_id: str, vm_id: str) -> int:
    """A VM's vCPU 0 CNTVCT, read from its node."""
    return sim.nodes[node_id].host.vm(vm_id).get_one_reg(0, OneReg.TIMER_CNT)


@pytest.mark.asyncio
async def test_restart_lists_guests_again_destroys_nothing_reuses_no_id(tmp_path: Path) -> None:
    async with sim_cluster(NODES, state_path=tmp_path / "state.db") as sim:
        c = sim.cluster
        g1 = await c.create_guest("", 1, WORKLOAD, "a")
        g2 = await c.create_guest("", 2, WORKLOAD, "b")
        named = await c.create_guest("web", 1, WORKLOAD, "a")
        moved = await c.migrate(g1.guest_id, "b", Method.AUTO, wait=True)
        assert moved.phase is Phase.SUCCEEDED
        before = node_vms(sim)
        await sim.crash_controller()

        c2 = await sim.restart_controller()
        assert node_vms(sim) == before  # nothing destroyed, nothing created
        assert {g: (r.node_id, r.vm_id, r.state) for g, r in c2.guests.items()} == {
            g1.guest_id: ("b", c2.guest(g1.guest_id).vm_id, GuestState.RUNNING),
            g2.guest_id: ("b", g2.vm_id, GuestState.RUNNING),
            named.guest_id: ("a", named.vm_id, GuestState.RUNNING),
        }
        assert c2.guest(g1.guest_id).vm_id.endswith("@" + moved.migration_id)
        assert c2.migration(moved.migration_id).phase is Phase.SUCCEEDED
        g3 = await c2.create_guest("", 1, WORKLOAD, "a")
        assert g3.guest_id not in (g1.guest_id, g2.guest_id, named.guest_id)
        assert g3.vm_id not in {v for vms in before.values() for v in vms}
        again = await c2.migrate(g3.guest_id, "b", Method.AUTO, wait=True)
        assert again.migration_id != moved.migration_id and again.phase is Phase.SUCCEEDED
        with pytest.raises(InvalidArgument):
            await c2.create_guest(g1.vm_id, 1, WORKLOAD, "a")  # named like a VM: refused
        assert all(running for vms in node_vms(sim).values() for running in vms.values())


def _stop_at(step: Step) -> tuple[asyncio.Event, FaultHook]:
    reached = asyncio.Event()

    async def hook(record: MigrationRecord, at: Step) -> None:
        if at is step:
            reached.set()
            await asyncio.Event().wait()  # frozen here until killed

    return reached, hook


@pytest.mark.asyncio
@pytest.mark.parametrize("step", PIPELINE)
async def test_controller_killed_at_each_step_recovers(tmp_path: Path, step: Step) -> None:
    reached, hook = _stop_at(step)
    async with sim_cluster(NODES, state_path=tmp_path / "s.db", fault_hook=hook) as sim:
        c = sim.cluster
        g = await c.create_guest("g", 2, WORKLOAD, "a")
        sim.advance_s(1.0)
        record = await c.migrate("g", "b", Method.AUTO)
        await asyncio.wait_for(reached.wait(), 10)
        counter_before = guest_counter(sim, "a", g.vm_id) if step is not Step.CLEANUP else None
        await sim.crash_controller()
        sim.advance_s(0.5)

        c2 = await sim.restart_controller()
        forward = step is Step.CLEANUP
        r2 = c2.migration(record.migration_id)
        assert r2.phase.terminal
        assert r2.recovered == ("rolled_forward" if forward else "rolled_back")
        assert r2.journal_step == step.value
        guest = c2.guest("g")
        assert guest.state is GuestState.RUNNING and guest.migrating is None
        vms = node_vms(sim)
        if forward:
            assert (guest.node_id, vms) == ("b", {"a": {}, "b": {guest.vm_id: True}})
            assert guest.generation == 1 and guest.migrations == 1
        else:
            assert (guest.node_id, guest.vm_id, vms) == ("a", g.vm_id, {"a": {g.vm_id: True}, "b": {}})
        if counter_before is not None:
            assert guest_counter(sim, guest.node_id, guest.vm_id) >= counter_before  # never backwards
        # Recovery again (a crash during recovery) changes nothing.
        await sim.crash_controller()
        c3 = await sim.restart_controller()
        assert node_vms(sim) == vms and c3.guest("g").vm_id == guest.vm_id
        assert c3.migration(record.migration_id).recovered == r2.recovered
        # And the guest can move on.
        nxt = await c3.migrate("g", "a" if forward else "b", Method.AUTO, wait=True)
        assert nxt.phase is Phase.SUCCEEDED, nxt.reason


@pytest.mark.asyncio
@pytest.mark.parametrize("batch_ran", [True, False])
async def test_unanswered_resume_is_held_then_decided_by_the_destination(
    tmp_path: Path, batch_ran: bool
) -> None:
    async with sim_cluster(NODES, state_path=tmp_path / "s.db") as sim:
        c = sim.cluster
        g = await c.create_guest("g", 2, WORKLOAD, "a")
        sim.advance_s(1.0)
        dst = c.pool.client(NodeId("b"))
        real_batch = dst.batch

        async def lost_answer(calls: Sequence[pb.BatchCall]) -> list[pb.BatchResult]:
            if calls[-1].WhichOneof("call") != "resume_vm":
                return await real_batch(calls)
            if batch_ran:
                await real_batch(calls)  # done on the node, but the answer never comes back
            raise NodeCallError("b", "Batch", "DEADLINE_EXCEEDED", None, "deadline exceeded")

        setattr(dst, "batch", lost_answer)  # noqa: B010 - this test's lost answer
        record = await c.migrate("g", "b", Method.AUTO, wait=True)
        assert not record.phase.terminal and record.journal_step == "resume"
        assert record.reason.startswith("in doubt") and c.guest("g").migrating == record.migration_id
        assert record.steps == ["prepare", "pause", "snapshot", "transfer", "resume"]
        assert c.store.journals()[-1].reason == record.reason.removeprefix("in doubt: ").split(";")[0]
        assert c.node("b").healthy  # one timeout is a slow answer, not a dead host
        dst_vm = f"g@{record.migration_id}"
        assert node_vms(sim) == {"a": {g.vm_id: False}, "b": {dst_vm: batch_ran}}
        setattr(dst, "batch", real_batch)  # noqa: B010
        await reconcile(c)
        r = c.migration(record.migration_id)
        guest = c.guest("g")
        assert r.phase.terminal and guest.migrating is None and guest.state is GuestState.RUNNING
        if batch_ran:
            assert r.recovered == "rolled_forward" and r.phase is Phase.SUCCEEDED
            assert (guest.node_id, guest.vm_id, node_vms(sim)) == (
                "b",
                dst_vm,
                {"a": {}, "b": {dst_vm: True}},
            )
        else:
            assert r.recovered == "rolled_back" and r.phase is Phase.FAILED
            assert (guest.node_id, guest.vm_id, node_vms(sim)) == (
                "a",
                g.vm_id,
                {"a": {g.vm_id: True}, "b": {}},
            )
        # Settled: another round changes nothing.
        before = node_vms(sim)
        await reconcile(c)
        assert node_vms(sim) == before


@pytest.mark.asyncio
async def test_resume_batch_that_never_reached_the_destination_rolls_back_at_once(tmp_path: Path) -> None:
    # The destination refuses connections (its host down): the batch was never received, so it
    # did not resume there: a definite failure, rolled back without waiting for the destination.
    async with sim_cluster(NODES, state_path=tmp_path / "s.db") as sim:
        c = sim.cluster
        g = await c.create_guest("g", 2, WORKLOAD, "a")
        sim.advance_s(1.0)
        dst = c.pool.client(NodeId("b"))
        real_batch = dst.batch
        refused = "failed to connect to all addresses; last error: Connection refused"

        async def no_connection(calls: Sequence[pb.BatchCall]) -> list[pb.BatchResult]:
            if calls[-1].WhichOneof("call") != "resume_vm":
                return await real_batch(calls)
            raise NodeCallError("b", "Batch", "UNAVAILABLE", None, refused)

        setattr(dst, "batch", no_connection)  # noqa: B010 - this test's refused connection
        record = await c.migrate("g", "b", Method.AUTO, wait=True)
        assert record.phase is Phase.FAILED and record.steps[-1] == "rollback", record.reason
        assert "UNAVAILABLE" in record.reason and not c.node("b").healthy
        guest = c.guest("g")
        assert (guest.node_id, guest.vm_id, guest.migrating) == ("a", g.vm_id, None)
        assert node_vms(sim) == {"a": {g.vm_id: True}, "b": {}}


@pytest.mark.asyncio
async def test_node_crash_marks_its_guests_lost_visibly(tmp_path: Path) -> None:
    async with sim_cluster(NODES, state_path=tmp_path / "s.db") as sim, controller_stub(sim.cluster) as stub:
        c = sim.cluster
        await c.create_guest("x", 1, WORKLOAD, "a")
        await c.create_guest("y", 1, WORKLOAD, "b")
        host = sim.nodes["a"].host
        for vm_id in list(host.vms):  # the host crashed and came back empty
            host.destroy_vm(vm_id)
        watcher = c.telemetry.subscribe()
        await c.reconcile()
        event = watcher.queue.get_nowait()
        assert event is not None and list(event.node.node.lost_guests) == ["x"]  # telemetry
        c.telemetry.unsubscribe(watcher)
        metrics = generate_latest(controller_registry(c)).decode()
        assert "kvmtimer_controller_guests_lost 1.0" in metrics
        listed = await stub.ListGuests(cpb.ListGuestsRequest())
        states = {g.guest_id: (g.state, g.state_reason) for g in listed.guests}
        assert states["y"] == (cpb.GUEST_STATE_RUNNING, "")
        assert states["x"][0] == cpb.GUEST_STATE_LOST and "no longer has" in states["x"][1]
        nodes = {n.node_id: n for n in (await stub.ListNodes(cpb.ListNodesRequest())).nodes}
        assert list(nodes["a"].lost_guests) == ["x"] and nodes["a"].healthy and nodes["a"].guest_count == 0
        assert host.vms == {}  # not recreated behind the user's back
        # Still lost after a restart; destroying it forgets it.
        await sim.crash_controller()
        c2 = await sim.restart_controller()
        assert c2.guest("x").state is GuestState.LOST and host.vms == {}
        await c2.destroy_guest("x")
        assert "x" not in c2.guests


@pytest.mark.asyncio
async def test_orphan_vms_are_reported_never_destroyed(tmp_path: Path) -> None:
    async with sim_cluster(NODES, state_path=tmp_path / "s.db") as sim, controller_stub(sim.cluster) as stub:
        node = sim.nodes["b"].stub
        await node.CreateVm(pb.CreateVmRequest(vm_id="by-hand"))
        await node.CreateVm(pb.CreateVmRequest(vm_id="z@3", owner=pb.VmOwner(guest_id="z")))
        await sim.cluster.reconcile()
        await sim.cluster.reconcile()
        nodes = {n.node_id: n for n in (await stub.ListNodes(cpb.ListNodesRequest())).nodes}
        assert [(o.vm_id, o.owner_guest_id) for o in nodes["b"].orphans] == [("by-hand", ""), ("z@3", "z")]
        assert set(sim.nodes["b"].host.vms) == {"by-hand", "z@3"}


@pytest.mark.asyncio
async def test_a_guest_created_while_the_nodes_are_listed_is_not_judged_by_those_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lists predate its VM: reconciliation must not call it lost (found by the fault campaign)."""
    from controller.service import reconciler

    async with sim_cluster(NODES, state_path=tmp_path / "s.db") as sim:
        original = reconciler.list_nodes

        async def list_then_create(cluster: Cluster) -> dict[NodeId, list[NodeVm] | None]:
            listings = await original(cluster)
            await cluster.create_guest("late", 1, WORKLOAD, "a")
            return listings

        monkeypatch.setattr(reconciler, "list_nodes", list_then_create)
        await sim.cluster.reconcile()
        assert sim.cluster.guest("late").state is GuestState.RUNNING
        monkeypatch.setattr(reconciler, "list_nodes", original)
        await sim.cluster.reconcile()
        assert sim.cluster.guest("late").state is GuestState.RUNNING
