"""Every Controller RPC's bad input: the exact status code, and nothing changed anywhere.

Edge cases covered (each checked against the controller's guests and migrations and every
node's VM list, before and after):
- unknown guest / node / migration ids: NOT_FOUND (GetGuest, DestroyGuest, Migrate to an unknown
  destination, CancelMigration, GetMigration, ListMigrations, CreateGuest on an unknown node,
  WatchTelemetry filters)
- invalid values: INVALID_ARGUMENT (guest ids with '@' or too long, vCPUs out of range, a bad
  workload period, an unknown method, a migration id of digits only, missing guest id,
  RegisterNode without id/address, migrating onto the node it runs on)
- duplicates: ALREADY_EXISTS (guest id taken; a migration id reused for another request)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

import grpc
import pytest
from kvmtimer.v1 import controller_pb2 as cpb
from kvmtimer.v1 import controller_pb2_grpc
from kvmtimer.v1 import node_pb2 as pb

from controller.core.migration import Method, Phase
from node.core.features import ApiProfile, EcvLevel, HostFeatures
from node.core.workload import WorkloadSpec
from tests.support.cluster import CNTFRQ, SimCluster, controller_stub, sim_cluster

FEATURES = HostFeatures(
    cntfrq_hz=CNTFRQ, ecv=EcvLevel.CNTPOFF, vhe=True, api_profile=ApiProfile.VM_COUNTER_OFFSET
)
Stub = controller_pb2_grpc.ControllerStub
Call = Callable[[Stub], Awaitable[object]]
NOT_FOUND, INVALID, EXISTS = (
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.ALREADY_EXISTS,
)


async def _drain(stream: object) -> None:
    async for _ in cast("grpc.aio.UnaryStreamCall[object, object]", stream):
        break


CASES: list[tuple[str, grpc.StatusCode, Call]] = [
    ("get unknown guest", NOT_FOUND, lambda s: s.GetGuest(cpb.GetGuestRequest(guest_id="nope"))),
    ("destroy unknown guest", NOT_FOUND, lambda s: s.DestroyGuest(cpb.DestroyGuestRequest(guest_id="nope"))),
    ("create on unknown node", NOT_FOUND, lambda s: s.CreateGuest(cpb.CreateGuestRequest(node_id="zz"))),
    ("create with '@'", INVALID, lambda s: s.CreateGuest(cpb.CreateGuestRequest(guest_id="g@1"))),
    ("create, id too long", INVALID, lambda s: s.CreateGuest(cpb.CreateGuestRequest(guest_id="x" * 65))),
    ("create, 513 vCPUs", INVALID, lambda s: s.CreateGuest(cpb.CreateGuestRequest(vcpus=513))),
    (
        "create, bad period",
        INVALID,
        lambda s: s.CreateGuest(cpb.CreateGuestRequest(workload=pb.WorkloadSpec(period_ticks=1))),
    ),
    ("create, taken id", EXISTS, lambda s: s.CreateGuest(cpb.CreateGuestRequest(guest_id="g"))),
    ("migrate unknown guest", NOT_FOUND, lambda s: s.Migrate(cpb.MigrateRequest(guest_id="nope"))),
    ("migrate without guest", INVALID, lambda s: s.Migrate(cpb.MigrateRequest())),
    (
        "migrate to unknown node",
        NOT_FOUND,
        lambda s: s.Migrate(cpb.MigrateRequest(guest_id="g", destination="zz")),
    ),
    (
        "migrate onto its own node",
        INVALID,
        lambda s: s.Migrate(cpb.MigrateRequest(guest_id="g", destination="a")),
    ),
    (
        "migrate, unknown method",
        INVALID,
        lambda s: s.Migrate(
            cpb.MigrateRequest(guest_id="g", destination="b", method=cast(cpb.MigrationMethod, 9))
        ),
    ),
    (
        "migrate, id of digits",
        INVALID,
        lambda s: s.Migrate(cpb.MigrateRequest(guest_id="g", destination="b", migration_id="42")),
    ),
    (
        "migration id reused for another guest",
        EXISTS,
        lambda s: s.Migrate(cpb.MigrateRequest(guest_id="h", destination="a", migration_id="done")),
    ),
    ("cancel unknown", NOT_FOUND, lambda s: s.CancelMigration(cpb.CancelMigrationRequest(migration_id="zz"))),
    (
        "get unknown migration",
        NOT_FOUND,
        lambda s: s.GetMigration(cpb.GetMigrationRequest(migration_id="zz")),
    ),
    (
        "list migrations of unknown guest",
        NOT_FOUND,
        lambda s: s.ListMigrations(cpb.ListMigrationsRequest(guest_id="nope")),
    ),
    (
        "register without id",
        INVALID,
        lambda s: s.RegisterNode(cpb.RegisterNodeRequest(address="127.0.0.1:1")),
    ),
    (
        "watch unknown node",
        NOT_FOUND,
        lambda s: _drain(s.WatchTelemetry(cpb.WatchClusterTelemetryRequest(node_ids=["zz"]))),
    ),
]


def snapshot(sim: SimCluster) -> object:
    c = sim.cluster
    return (
        {g: (r.node_id, r.vm_id, r.state, r.migrating) for g, r in c.guests.items()},
        {m: (r.phase, r.guest_id) for m, r in c.migrations.items()},
        {n: {v: vm.running for v, vm in node.host.vms.items()} for n, node in sim.nodes.items()},
        c.store.guests(),
        [j for j in c.store.journals()],
    )


@pytest.mark.asyncio
async def test_bad_input_gets_its_code_and_changes_nothing(tmp_path: Path) -> None:
    async with (
        sim_cluster([("a", FEATURES), ("b", FEATURES)], state_path=tmp_path / "s.db") as sim,
        controller_stub(sim.cluster) as stub,
    ):
        await sim.cluster.create_guest("g", 1, WorkloadSpec(CNTFRQ // 100), "a")
        await sim.cluster.create_guest("h", 1, WorkloadSpec(CNTFRQ // 100), "b")
        done = await sim.cluster.migrate("g", "b", Method.AUTO, "done", wait=True)
        assert done.phase is Phase.SUCCEEDED
        await sim.cluster.migrate("g", "a", Method.AUTO, wait=True)
        for name, code, call in CASES:
            before = snapshot(sim)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(stub)
            assert err.value.code() == code, f"{name}: {err.value.code()} {err.value.details()}"
            assert snapshot(sim) == before, name
