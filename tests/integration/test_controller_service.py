"""Controller refusals, conflicts, cancellation, queueing and the gRPC surface.

Edge cases covered:
- refusals change nothing anywhere: different CNTFRQ (message names both), explicit method the
  destination lacks, destination down, unknown guest/node, migrating to the node it is on;
- a second migration of a guest already migrating is ABORTED; migration ids make Migrate idempotent;
- CancelMigration before the destination resumes leaves the guest running on the source, after: refused;
- parallel-migration limits queue excess migrations in Pending;
- WatchMigrations streams every phase in order; exact status codes for each mapped error.
"""

from __future__ import annotations

import asyncio
from typing import cast

import grpc
import pytest
from kvmtimer.v1 import controller_pb2 as cpb
from kvmtimer.v1 import node_pb2 as pb

from controller.core.errors import Aborted, AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from controller.core.migration import Limits, Method, MigrationRecord, Phase
from node.core.features import ApiProfile, EcvLevel, HostFeatures
from node.core.workload import WorkloadSpec
from tests.support.cluster import CNTFRQ, SimCluster, controller_stub, sim_cluster
from tests.support.wait import until

ECV_VHE = HostFeatures(ecv=EcvLevel.CNTPOFF, vhe=True)
NOECV = HostFeatures(ecv=EcvLevel.NI, vhe=False)
PERIOD = CNTFRQ // 100


async def wait_for_step(record: MigrationRecord, step: str, timeout_s: float = 10.0) -> None:
    await until(lambda: step in record.steps, timeout_s=timeout_s, what=f"step {step}", poll_s=0.001)


def snapshot(sim: SimCluster) -> dict[str, object]:
    """Everything a refusal must leave untouched."""
    return {
        node_id: sorted(
            (
                vm.vm_id,
                vm.running,
                vm.voffset,
                vm.poffset,
                tuple((t.ctl, t.cval) for v in vm.vcpus.values() for t in v.timers),
            )
            for vm in n.host.vms.values()
        )
        for node_id, n in sim.nodes.items()
    }


@pytest.mark.asyncio
async def test_refusals_change_nothing_and_map_to_exact_status_codes() -> None:
    fast = HostFeatures(cntfrq_hz=1_000_000_000, ecv=EcvLevel.CNTPOFF, vhe=True)
    by_value = HostFeatures(api_profile=ApiProfile.BY_VALUE)
    async with sim_cluster([("a", ECV_VHE), ("fast", fast), ("old", by_value), ("b", NOECV)]) as sim:
        await sim.cluster.create_guest("g", 2, WorkloadSpec(PERIOD, use_ptimer=True), "a")
        sim.advance_s(0.2)
        before = snapshot(sim)
        async with controller_stub(sim.cluster) as stub:
            cases: list[tuple[cpb.MigrateRequest, grpc.StatusCode, tuple[str, ...]]] = [
                (
                    cpb.MigrateRequest(guest_id="g", destination="fast"),
                    grpc.StatusCode.FAILED_PRECONDITION,
                    ("25000000 Hz", "1000000000 Hz"),
                ),
                (
                    cpb.MigrateRequest(
                        guest_id="g", destination="b", method=cpb.MIGRATION_METHOD_VCPU_OFFSETS
                    ),
                    grpc.StatusCode.FAILED_PRECONDITION,
                    ("VCPU_OFFSETS",),
                ),
                (
                    cpb.MigrateRequest(guest_id="g", destination="old"),
                    grpc.StatusCode.FAILED_PRECONDITION,
                    ("physical",),
                ),
                (cpb.MigrateRequest(guest_id="nope"), grpc.StatusCode.NOT_FOUND, ("nope",)),
                (cpb.MigrateRequest(guest_id="g", destination="zz"), grpc.StatusCode.NOT_FOUND, ("zz",)),
                (
                    cpb.MigrateRequest(guest_id="g", destination="a"),
                    grpc.StatusCode.INVALID_ARGUMENT,
                    ("already",),
                ),
                (
                    cpb.MigrateRequest(guest_id="g", method=cast(cpb.MigrationMethod, 99)),
                    grpc.StatusCode.INVALID_ARGUMENT,
                    ("99",),
                ),
                (cpb.MigrateRequest(), grpc.StatusCode.INVALID_ARGUMENT, ("guest_id",)),
            ]
            for request, code, words in cases:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Migrate(request)
                assert info.value.code() == code, (request, info.value.details())
                for word in words:
                    assert word in (info.value.details() or ""), (word, info.value.details())
            # Destination down: its server stops, a health round marks it.
            await sim.nodes["b"].server.stop(grace=None)
            await sim.cluster.check_health()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Migrate(cpb.MigrateRequest(guest_id="g", destination="b"))
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "down" in (info.value.details() or "")
            nodes = {n.node_id: n for n in (await stub.ListNodes(cpb.ListNodesRequest())).nodes}
            assert not nodes["b"].healthy and nodes["a"].healthy
            assert nodes["a"].guest_count == 1 and nodes["a"].vcpu_count == 2
            assert nodes["fast"].cntfrq_hz == 1_000_000_000
            assert nodes["old"].api_profile == pb.API_PROFILE_BY_VALUE
        assert snapshot(sim) == before
        assert sim.cluster.migrations == {}
        assert sim.cluster.guest("g").node_id == "a" and sim.cluster.guest("g").migrating is None


@pytest.mark.asyncio
async def test_second_migration_of_a_migrating_guest_is_aborted_and_ids_are_idempotent() -> None:
    async with sim_cluster([("a", ECV_VHE), ("b", NOECV)]) as sim:
        gate = asyncio.Event()

        async def hold(record: MigrationRecord) -> None:
            await gate.wait()

        sim.cluster.transfer_hook = hold
        await sim.cluster.create_guest("g", 1, WorkloadSpec(PERIOD), "a")
        first = await sim.cluster.migrate("g", "b", Method.AUTO, "m1")
        await wait_for_step(first, "transfer")
        with pytest.raises(Aborted):
            await sim.cluster.migrate("g", "b", Method.AUTO, "m2")
        # Same id, same request: the same record, no second migration.
        assert await sim.cluster.migrate("g", "b", Method.AUTO, "m1") is first
        with pytest.raises(AlreadyExists):
            await sim.cluster.migrate("g", "b", Method.BY_VALUE, "m1")
        gate.set()
        again = await sim.cluster.migrate("g", "b", Method.AUTO, "m1", wait=True)
        assert again is first and first.phase is Phase.SUCCEEDED
        assert list(sim.cluster.migrations) == ["m1"]
        assert sim.cluster.guest("g").node_id == "b"


@pytest.mark.asyncio
async def test_cancel_before_resume_keeps_the_guest_on_the_source() -> None:
    async with sim_cluster([("a", ECV_VHE), ("b", NOECV)]) as sim:
        guest = await sim.cluster.create_guest("g", 2, WorkloadSpec(PERIOD, use_ptimer=True), "a")
        sim.advance_s(0.5)

        async def cancel_during_transfer(record: MigrationRecord) -> None:
            await sim.cluster.cancel(record.migration_id)
            sim.advance_s(0.1)

        sim.cluster.transfer_hook = cancel_during_transfer
        record = await sim.cluster.migrate("g", "b", Method.AUTO, wait=True)
        assert record.phase is Phase.FAILED and record.cancelled
        assert "cancel" in record.reason
        assert record.steps[-1] == "rollback"
        assert guest.node_id == "a" and guest.migrating is None
        assert sim.nodes["b"].host.vms == {}
        vm = sim.nodes["a"].host.vm(guest.vm_id)
        assert vm.running
        sim.advance_s(0.5)
        obs = await sim.cluster.observations(guest)
        for v in obs.vcpus:
            # Paused for 0.1 s on the source with the counter running: the guest saw real time.
            assert v.last_jump_error_ticks == 0
            assert v.min_step_v >= 0 and v.vtimer_received == v.vtimer_expected
        with pytest.raises(FailedPrecondition):
            await sim.cluster.cancel(record.migration_id)
        with pytest.raises(NotFound):
            await sim.cluster.cancel("nope")


@pytest.mark.asyncio
async def test_excess_migrations_queue_in_pending() -> None:
    specs = [("a", ECV_VHE), ("b", NOECV), ("c", ECV_VHE), ("d", NOECV)]
    async with sim_cluster(specs, limits=Limits(parallel=1, outbound_per_node=1)) as sim:
        gate = asyncio.Event()

        async def hold(record: MigrationRecord) -> None:
            await gate.wait()

        sim.cluster.transfer_hook = hold
        await sim.cluster.create_guest("g1", 1, WorkloadSpec(PERIOD), "a")
        await sim.cluster.create_guest("g2", 1, WorkloadSpec(PERIOD), "c")
        m1 = await sim.cluster.migrate("g1", "b", Method.AUTO)
        m2 = await sim.cluster.migrate("g2", "d", Method.AUTO)
        await wait_for_step(m1, "transfer")
        assert m1.phase is Phase.RUNNING
        assert m2.phase is Phase.PENDING
        gate.set()
        await sim.cluster.wait(m1)
        await sim.cluster.wait(m2)
        assert (m1.phase, m2.phase) == (Phase.SUCCEEDED, Phase.SUCCEEDED)


@pytest.mark.asyncio
async def test_watch_migrations_streams_every_phase_and_grpc_guest_lifecycle() -> None:
    async with sim_cluster([("a", ECV_VHE), ("b", NOECV)]) as sim, controller_stub(sim.cluster) as stub:
        guest = await stub.CreateGuest(
            cpb.CreateGuestRequest(
                guest_id="g", vcpus=2, workload=pb.WorkloadSpec(period_ticks=PERIOD), node_id="a"
            )
        )
        assert (guest.node_id, guest.vcpus, guest.workload.period_ticks) == ("a", 2, PERIOD)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CreateGuest(cpb.CreateGuestRequest(guest_id="g", vcpus=1))
        assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CreateGuest(cpb.CreateGuestRequest(vcpus=1, workload=pb.WorkloadSpec(period_ticks=5)))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        call = stub.WatchMigrations(cpb.WatchMigrationsRequest())
        await until(lambda: sim.cluster.events.subscribers > 0, what="the WatchMigrations subscription")
        done = await stub.Migrate(cpb.MigrateRequest(guest_id="g", migration_id="m", wait=True))
        assert done.phase == cpb.MIGRATION_PHASE_SUCCEEDED and done.destination == "b"
        assert done.method == cpb.MIGRATION_METHOD_VM_COUNTER_OFFSET
        assert done.counter_error_ticks == 0 and done.HasField("counter_error_ticks")
        phases, steps = [], []
        async for event in call:
            if event.step:
                steps.append(event.step)
            else:
                phases.append(event.migration.phase)
            if event.migration.phase == cpb.MIGRATION_PHASE_SUCCEEDED:
                break
        call.cancel()
        assert phases == [
            cpb.MIGRATION_PHASE_PENDING,
            cpb.MIGRATION_PHASE_SCHEDULING,
            cpb.MIGRATION_PHASE_SCHEDULED,
            cpb.MIGRATION_PHASE_PREPARING_TARGET,
            cpb.MIGRATION_PHASE_TARGET_READY,
            cpb.MIGRATION_PHASE_RUNNING,
            cpb.MIGRATION_PHASE_SUCCEEDED,
        ]
        assert steps == ["prepare", "pause", "snapshot", "transfer", "resume", "cleanup"]
        listed = await stub.ListMigrations(cpb.ListMigrationsRequest(guest_id="g"))
        assert [m.migration_id for m in listed.migrations] == ["m"]
        got = await stub.GetGuest(cpb.GetGuestRequest(guest_id="g"))
        assert got.node_id == "b" and got.migrations == 1 and len(got.observations.vcpus) == 2
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CancelMigration(cpb.CancelMigrationRequest(migration_id="m"))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetMigration(cpb.GetMigrationRequest(migration_id="x"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        await stub.DestroyGuest(cpb.DestroyGuestRequest(guest_id="g"))
        assert sim.nodes["b"].host.vms == {}
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetGuest(cpb.GetGuestRequest(guest_id="g"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.asyncio
async def test_controller_core_errors_for_bad_guest_requests() -> None:
    async with sim_cluster([("a", ECV_VHE)]) as sim:
        with pytest.raises(InvalidArgument):
            await sim.cluster.create_guest("x", 0)
        with pytest.raises(NotFound):
            await sim.cluster.create_guest("x", 1, node_id="nope")
        with pytest.raises(FailedPrecondition):
            await sim.cluster.migrate(
                (await sim.cluster.create_guest("y", 1)).guest_id, "", Method.AUTO
            )  # no other node to go to
        assert sim.cluster.migrations == {}
