"""Migrate over gRPC and `kvmtimer migrate` for a guest using its physical timer (issue 9).

Edge cases covered:
- 6.4+ source -> 5.15 destination: Migrate is FAILED_PRECONDITION naming the destination and its
  kernel; nothing changed (no destination VM, source running, no migration record)
- the same with allow_state_loss: SUCCEEDED, the record lists not_carried and guest_uses_ptimer,
  and the guest's own observations show its physical-timer interrupts stopped
- `kvmtimer migrate` exits 2 (refused) without --allow-state-loss, 0 with it, and prints what
  was not carried
- the "uses its physical timer" criterion's second half: a PTIMER_CTL with ENABLE set on a
  6.4+ source, with a virtual-timer-only workload
- a guest without a physical timer moves without opt-in; the record still lists what one side lacked
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from kvmtimer.v1 import controller_pb2 as cpb
from kvmtimer.v1 import controller_pb2_grpc
from kvmtimer.v1 import node_pb2 as pb

from controller.cli import main
from controller.core.errors import FailedPrecondition
from controller.core.migration import Method, Phase
from controller.service.server import build_server, mark_serving
from node.core.features import ApiProfile, EcvLevel, HostFeatures
from tests.support.cluster import CNTFRQ, SimCluster, controller_stub, sim_cluster

PERIOD = CNTFRQ // 100
NODES = [
    ("src", HostFeatures(ecv=EcvLevel.CNTPOFF, api_profile=ApiProfile.VM_COUNTER_OFFSET)),
    ("old", HostFeatures(ecv=EcvLevel.NI, api_profile=ApiProfile.BY_VALUE)),
]


async def ptimer_guest(sim: SimCluster, stub: object) -> None:
    await stub.CreateGuest(  # type: ignore[attr-defined]
        cpb.CreateGuestRequest(
            guest_id="g",
            vcpus=2,
            node_id="src",
            workload=pb.WorkloadSpec(period_ticks=PERIOD, use_ptimer=True),
        )
    )
    sim.advance_s(1.0)


@pytest.mark.asyncio
async def test_migrate_rpc_refuses_then_moves_with_allow_state_loss() -> None:
    async with sim_cluster(NODES) as sim, controller_stub(sim.cluster) as stub:
        await ptimer_guest(sim, stub)
        src_vm = sim.nodes["src"].host.vm(sim.cluster.guest("g").vm_id)
        before = src_vm.snapshot()
        with pytest.raises(grpc.aio.AioRpcError) as exc_info:
            await stub.Migrate(cpb.MigrateRequest(guest_id="g", destination="old", wait=True))
        err = exc_info.value
        assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "destination old runs a BY_VALUE (5.15, pre-6.4) kernel" in (err.details() or "")
        assert sim.nodes["old"].host.vms == {}
        assert src_vm.running and src_vm.snapshot() == before
        listed = await stub.ListMigrations(cpb.ListMigrationsRequest())
        assert list(listed.migrations) == []

        received_before = src_vm.workload.vcpus[0].ptimer.received  # type: ignore[union-attr]
        record = await stub.Migrate(
            cpb.MigrateRequest(guest_id="g", destination="old", wait=True, allow_state_loss=True)
        )
        assert record.phase == cpb.MIGRATION_PHASE_SUCCEEDED, record.reason
        assert (record.guest_uses_ptimer, record.allow_state_loss) == (True, True)
        assert list(record.not_carried) == ["PTIMER_CTL", "PTIMER_CVAL", "PTIMER_CNT"]
        assert record.counter_error_ticks == 0  # simulated clock: no time passed while stopped
        sim.advance_s(1.0)
        guest = await stub.GetGuest(cpb.GetGuestRequest(guest_id="g"))
        for v in guest.observations.vcpus:
            assert v.ptimer_received == received_before < v.ptimer_expected
            assert v.vtimer_received == v.vtimer_expected


@pytest.mark.asyncio
async def test_kvmtimer_migrate_allow_state_loss_flag(capsys: pytest.CaptureFixture[str]) -> None:
    async with sim_cluster(NODES) as sim:
        server, port, health = build_server(sim.cluster)
        await server.start()
        await mark_serving(health)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await ptimer_guest(sim, controller_pb2_grpc.ControllerStub(channel))
            base = ["--controller", f"127.0.0.1:{port}"]
            assert await asyncio.to_thread(main, ["migrate", "g", "--to", "old", *base]) == 2
            assert "FAILED_PRECONDITION" in capsys.readouterr().err
            assert sim.nodes["old"].host.vms == {}
            args = ["migrate", "g", "--to", "old", "--allow-state-loss", *base]
            assert await asyncio.to_thread(main, args) == 0
            out = capsys.readouterr().out
            assert "not carried:" in out and "PTIMER_CTL, PTIMER_CVAL, PTIMER_CNT" in out
            assert sim.cluster.guest("g").node_id == "old"
        finally:
            await server.stop(grace=None)


@pytest.mark.asyncio
async def test_a_ptimer_enabled_by_the_guest_counts_as_used_where_the_source_can_read_it() -> None:
    """Criterion, second half: on a 6.4+ source, a vCPU whose PTIMER_CTL has ENABLE set."""
    async with sim_cluster(NODES) as sim:
        guest = await sim.cluster.create_guest("g", 2, None, "src")  # workload: virtual timer only
        node = sim.nodes["src"].stub
        await node.PauseVm(pb.PauseVmRequest(vm_id=guest.vm_id))
        op = pb.GuestOp(write=pb.SysRegWrite(reg=pb.SYS_REG_CNTP_CTL_EL0, value=1))
        await node.RunVcpu(pb.RunVcpuRequest(vm_id=guest.vm_id, vcpu_index=1, ops=[op]))
        await node.ResumeVm(pb.ResumeVmRequest(vm_id=guest.vm_id))
        with pytest.raises(FailedPrecondition):
            await sim.cluster.migrate("g", "old", Method.AUTO, wait=True)
        assert sim.nodes["old"].host.vms == {}
        record = await sim.cluster.migrate("g", "old", Method.AUTO, wait=True, allow_state_loss=True)
        assert record.guest_uses_ptimer and record.phase is Phase.SUCCEEDED


@pytest.mark.asyncio
async def test_a_virtual_timer_guest_moves_without_opt_in_and_the_record_says_what_one_side_lacked() -> None:
    async with sim_cluster(NODES) as sim:
        await sim.cluster.create_guest("g", 1, None, "src")
        record = await sim.cluster.migrate("g", "old", Method.AUTO, wait=True)
        assert (record.phase, record.guest_uses_ptimer, record.method) == (
            Phase.SUCCEEDED,
            False,
            Method.BY_VALUE,
        )
        assert record.not_carried == ["PTIMER_CTL", "PTIMER_CVAL", "PTIMER_CNT"]
