"""`kvmtimer watch`: the controller's telemetry stream in the terminal.

Edge cases covered:
- against a real in-process controller: JSON lines are telemetry items (the recording format)
  and carry the migration's events in order; the live stream is subscribed while it runs and
  let go when it ends (--duration);
- plain lines for samples, migration events (with downtime and counter error at the end) and
  node health; --count stops after N items; a growing `dropped` is reported once per change;
- a controller without WatchTelemetry (UNIMPLEMENTED): a note on stderr, then migration events
  only, filtered by --guest / --node on the client side;
- the live view: one row per vCPU with its drift from ideal time, recent events.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from kvmtimer.v1 import controller_pb2 as cpb
from kvmtimer.v1 import node_pb2 as pb

from controller.cli import build_parser, main, telemetry
from controller.core.migration import Method, Phase
from controller.service.server import build_server, mark_serving
from controller.telemetry import record
from node.core.features import ApiProfile, EcvLevel, HostFeatures
from node.core.workload import WorkloadSpec
from node.runtime.settings import typed
from tests.support.cluster import CNTFRQ, sim_cluster
from tests.support.wait import until

NODES = [
    ("ecv-vhe", HostFeatures(ecv=EcvLevel.CNTPOFF, vhe=True, api_profile=ApiProfile.VM_COUNTER_OFFSET)),
    ("noecv", HostFeatures(ecv=EcvLevel.NI, vhe=True, api_profile=ApiProfile.BY_VALUE)),
]


@pytest.mark.asyncio
async def test_watch_json_against_the_controller(capsys: pytest.CaptureFixture[str]) -> None:
    async with sim_cluster(NODES) as sim:
        await sim.cluster.create_guest("g1", 1, WorkloadSpec(CNTFRQ // 100), "ecv-vhe")
        # Serve the cluster on a loopback port; the CLI connects like any client.
        server, port, health = build_server(sim.cluster)
        await server.start()
        await mark_serving(health)
        try:
            before = sim.cluster.telemetry.subscribers + sim.cluster.events.subscribers
            argv = ["watch", "--controller", f"127.0.0.1:{port}", "--events-only", "--output", "json"]
            watching = asyncio.create_task(asyncio.to_thread(main, [*argv, "--duration", "4"]))
            await until(lambda: sim.cluster.telemetry.subscribers + sim.cluster.events.subscribers > before)
            rec = await sim.cluster.migrate("g1", "noecv", Method.AUTO, wait=True)
            assert rec.phase is Phase.SUCCEEDED
            assert await asyncio.wait_for(watching, 15) == 0
            await until(lambda: sim.cluster.telemetry.subscribers + sim.cluster.events.subscribers == before)
        finally:
            await server.stop(grace=None)
    out = capsys.readouterr().out
    # stdout also has the in-process cluster's console log lines; the items are the JSON ones.
    items = [record.item_from_json(json.loads(line)) for line in out.splitlines() if line.startswith("{")]
    events = [i.migration for i in items if i.HasField("migration")]
    assert all(not i.HasField("samples") for i in items)
    assert [e.migration.phase for e in events if not e.step][-1] == cpb.MIGRATION_PHASE_SUCCEEDED
    assert {e.migration.migration_id for e in events} == {rec.migration_id}
    assert [e.step for e in events if e.step] == [
        "prepare",
        "pause",
        "snapshot",
        "transfer",
        "resume",
        "cleanup",
    ]


# --- with a fake controller stub ---------------------------------------------------------------


class FakeRpcError(grpc.RpcError, grpc.Call):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "fake"

    def initial_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return ()

    def trailing_metadata(self) -> tuple[Any, ...]:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: object) -> bool:
        return False


class FakeCall:
    def __init__(self, items: list[object], error: FakeRpcError | None = None) -> None:
        self.items = items
        self.error = error
        self.cancelled = False

    def __iter__(self) -> Iterator[object]:
        yield from self.items
        if self.error is not None:
            raise self.error

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class FakeStub:
    def __init__(self, telemetry: FakeCall, migrations: FakeCall | None = None) -> None:
        self.telemetry = telemetry
        self.migrations = migrations or FakeCall([])
        self.requests: list[object] = []

    def WatchTelemetry(self, request: cpb.WatchClusterTelemetryRequest) -> FakeCall:
        self.requests.append(request)
        return self.telemetry

    def WatchMigrations(self, request: cpb.WatchMigrationsRequest) -> FakeCall:
        self.requests.append(request)
        return self.migrations

    def ListNodes(self, request: object, timeout: float) -> cpb.ListNodesResponse:
        return cpb.ListNodesResponse(nodes=[cpb.NodeStatus(node_id="n1", cntfrq_hz=CNTFRQ)])


def parse(*argv: str) -> telemetry.WatchSettings:
    return typed(
        telemetry.WatchSettings, build_parser().parse_args(["watch", "--controller", "127.0.0.1:1", *argv])
    )


def event(
    mid: str, guest: str, phase: int, step: str = "", src: str = "n1", dst: str = "n2"
) -> cpb.MigrationEvent:
    m = cpb.Migration(
        migration_id=mid,
        guest_id=guest,
        source=src,
        destination=dst,
        method=cpb.MIGRATION_METHOD_BY_VALUE,
        phase=phase,  # type: ignore[arg-type]
        downtime=1500,
        counter_error_ticks=-37_500,
    )
    return cpb.MigrationEvent(migration=m, step=step, realtime_ns=1_700_000_000_123_000_000)


def sample(guest: str, vcpu: int, t_ns: int, cntvct: int) -> pb.TelemetrySample:
    return pb.TelemetrySample(
        node_id="n1",
        vm_id=guest,
        guest_id=guest,
        vcpu_index=vcpu,
        realtime_ns=t_ns,
        cntvct=cntvct,
        cntpct=cntvct,
        traps_cntpct=True,
        trap_count=3,
        vtimer_ctl=1,
        running=True,
    )


def test_plain_lines_and_count(capsys: pytest.CaptureFixture[str]) -> None:
    items = [
        cpb.ClusterTelemetry(node=cpb.NodeHealthEvent(node=cpb.NodeStatus(node_id="n2", last_error="gone"))),
        cpb.ClusterTelemetry(
            samples=pb.TelemetryBatch(samples=[sample("g", 0, 10**18, 5), sample("g", 1, 10**18, 5)])
        ),
        cpb.ClusterTelemetry(migration=event("m-1", "g", cpb.MIGRATION_PHASE_RUNNING, "pause"), dropped=3),
        cpb.ClusterTelemetry(migration=event("m-1", "g", cpb.MIGRATION_PHASE_SUCCEEDED), dropped=3),
        cpb.ClusterTelemetry(migration=event("m-2", "g", cpb.MIGRATION_PHASE_PENDING)),  # past --count
    ]
    call = FakeCall(list(items))
    stub = FakeStub(call)
    args = parse("--count", "4", "--guest", "g", "--node", "n1")
    assert telemetry.cmd_watch(args, stub) == 0  # type: ignore[arg-type]
    (request,) = stub.requests
    assert isinstance(request, cpb.WatchClusterTelemetryRequest)
    assert (list(request.guest_ids), list(request.node_ids), request.events_only) == (["g"], ["n1"], False)
    assert call.cancelled
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" ", 2)[1] for line in lines if not line.startswith("#")] == [
        "node",
        "sample",
        "sample",
        "migration",
        "migration",
    ]
    assert "node n2 DOWN guests=0 vcpus=0: gone" in lines[0]
    assert "sample n1 g vcpu1 cntvct=5 cntpct=5" in lines[2] and "phys=trap traps=3" in lines[2]
    assert sum(1 for line in lines if line.startswith("# the stream dropped 3 items")) == 1
    assert lines[-2].endswith("migration m-1 g n1->n2 BY_VALUE step=pause")
    assert lines[-1].endswith("SUCCEEDED downtime=1.500ms counter_error=-37500ticks")
    assert not any("m-2" in line for line in lines)


def test_falls_back_to_migration_events(capsys: pytest.CaptureFixture[str]) -> None:
    unimplemented = FakeCall([], FakeRpcError(grpc.StatusCode.UNIMPLEMENTED))
    migrations = FakeCall(
        [
            event("m-1", "g", cpb.MIGRATION_PHASE_PENDING),
            event("m-2", "other", cpb.MIGRATION_PHASE_PENDING),
            event("m-3", "g", cpb.MIGRATION_PHASE_PENDING, src="n3", dst="n4"),
            event("m-1", "g", cpb.MIGRATION_PHASE_SUCCEEDED),
        ]
    )
    stub = FakeStub(unimplemented, migrations)
    assert telemetry.cmd_watch(parse("--guest", "g", "--node", "n2", "--output", "json"), stub) == 0  # type: ignore[arg-type]
    captured = capsys.readouterr()
    assert "no WatchTelemetry: showing migration events only" in captured.err
    items = [record.item_from_json(json.loads(line)) for line in captured.out.splitlines()]
    assert [(i.migration.migration.migration_id, i.migration.migration.phase) for i in items] == [
        ("m-1", cpb.MIGRATION_PHASE_PENDING),
        ("m-1", cpb.MIGRATION_PHASE_SUCCEEDED),
    ]


def test_other_errors_are_not_swallowed() -> None:
    stub = FakeStub(FakeCall([], FakeRpcError(grpc.StatusCode.PERMISSION_DENIED)))
    with pytest.raises(grpc.RpcError):
        telemetry.cmd_watch(parse(), stub)  # type: ignore[arg-type]


def test_live_view_rows_and_drift() -> None:
    state = telemetry.WatchState(cntfrq_hz={"n1": CNTFRQ})
    t0 = 10**18
    state.add(cpb.ClusterTelemetry(samples=pb.TelemetryBatch(samples=[sample("g", 0, t0, 1000)])))
    # One second later the guest counter moved 0.5 ms less than real time.
    later = sample("g", 0, t0 + 10**9, 1000 + CNTFRQ - CNTFRQ // 2000)
    state.add(cpb.ClusterTelemetry(samples=pb.TelemetryBatch(samples=[later])))
    state.add(cpb.ClusterTelemetry(migration=event("m-1", "g", cpb.MIGRATION_PHASE_SUCCEEDED), dropped=2))
    assert state.drift_us("g", later) == pytest.approx(-500.0)
    text = state.render("header")
    lines = text.splitlines()
    assert lines[0] == "header" and "dropped by the stream 2" in lines[1]
    (row,) = [line for line in lines if line.startswith("g ")]
    assert "-500.0" in row and "trap" in row and "run" in row
    assert lines[-1].endswith("SUCCEEDED downtime=1.500ms counter_error=-37500ticks")
