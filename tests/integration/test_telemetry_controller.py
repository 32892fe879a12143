"""Controller.WatchTelemetry and the node-stream collector, with in-process nodes (simulated clock).

Edge cases covered:
- idle: with nobody watching, no node stream is open (nodes sample nothing)
- one stream carries: current node statuses first, samples from both nodes with guest ids
  and exact contents, every phase of a migration, samples of the moved guest from its new
  node, and a node health change (node down)
- a migration's destination VM is attributed to its guest before the guest moves onto it
- filters: node_ids (samples, migrations touching the node, that node's health), guest_ids
  (partial batches cut to the guest), events_only; unknown node / guest -> NOT_FOUND
- slow subscriber: hub drops are counted and `dropped` is reported on every later item
- cancel: the client's cancel unsubscribes, and the collector closes the node streams
- a node stream that ends is reopened after the backoff (counted once), samples resume
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from kvmtimer.v1 import controller_pb2 as cpb
from kvmtimer.v1 import controller_pb2_grpc

from controller.core.migration import Method, Phase
from controller.service.cluster import Cluster
from controller.telemetry.hub import Hub
from node.core.clock import ManualClock
from node.core.features import ClockMode, EcvLevel, HostFeatures
from node.core.host import Host
from node.core.workload import WorkloadSpec
from node.service.server import build_server, mark_serving
from node.service.telemetry import TelemetryStreams
from tests.support.cluster import CNTFRQ, DAY_TICKS, SimCluster, controller_stub, sim_cluster
from tests.support.wait import until

FEATURES = HostFeatures(ecv=EcvLevel.CNTPOFF, vhe=True)
PERIOD = CNTFRQ // 100
Item = cpb.ClusterTelemetry


@contextlib.asynccontextmanager
async def watched_cluster(
    node_ids: tuple[str, ...] = ("a", "b"), *, hub_buffer: int | None = None
) -> AsyncIterator[tuple[SimCluster, controller_pb2_grpc.ControllerStub]]:
    """Simulated nodes, one 2-vCPU guest `g<node>` on each, a started cluster, a controller stub."""
    async with sim_cluster([(n, FEATURES) for n in node_ids]) as sim:
        if hub_buffer is not None:
            sim.cluster.telemetry = Hub(buffer=hub_buffer)
        sim.cluster.collector.rate_hz = 200.0
        for n in node_ids:
            await sim.cluster.create_guest(f"g{n}", 2, WorkloadSpec(PERIOD), n)
        sim.cluster.start()
        async with controller_stub(sim.cluster) as stub:
            yield sim, stub


async def read_until(
    call: grpc.aio.UnaryStreamCall[cpb.WatchClusterTelemetryRequest, Item],
    done: Callable[[list[Item]], bool],
    timeout_s: float = 10.0,
) -> list[Item]:
    items: list[Item] = []

    async def loop() -> None:
        while not done(items):
            item = await call.read()
            assert isinstance(item, Item), item
            items.append(item)

    await asyncio.wait_for(loop(), timeout_s)
    return items


def sample_nodes(items: list[Item]) -> set[str]:
    return {s.node_id for i in items if i.HasField("samples") for s in i.samples.samples}


def watch(
    stub: controller_pb2_grpc.ControllerStub, **request: object
) -> grpc.aio.UnaryStreamCall[cpb.WatchClusterTelemetryRequest, Item]:
    call: grpc.aio.UnaryStreamCall[cpb.WatchClusterTelemetryRequest, Item] = stub.WatchTelemetry(
        cpb.WatchClusterTelemetryRequest(**request)  # type: ignore[arg-type]
    )
    return call


async def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    await until(condition, timeout_s=timeout_s, what=what)


@pytest.mark.asyncio
async def test_idle_cluster_opens_no_node_streams() -> None:
    async with watched_cluster() as (sim, _):
        sim.cluster.collector._reconcile()  # a supervision pass, now: nobody watches
        assert sim.cluster.collector.streaming == frozenset()
        assert sim.cluster.collector.samples_total == 0


@pytest.mark.asyncio
async def test_stream_carries_samples_migration_events_and_node_health() -> None:
    async with watched_cluster(("a", "b")) as (sim, stub):
        sim.transfer_delay_ns = 250_000_000
        call = watch(stub)
        # Current node statuses first.
        first = await read_until(call, lambda items: len(items) == 2)
        assert [(i.node.node.node_id, i.node.node.healthy, i.node.node.guest_count) for i in first] == [
            ("a", True, 1),
            ("b", True, 1),
        ]
        assert all(i.dropped == 0 for i in first)

        items = await read_until(call, lambda items: sample_nodes(items) == {"a", "b"})
        for item in items:
            assert item.WhichOneof("item") == "samples"
            batch = item.samples
            node = batch.samples[0].node_id
            host = sim.nodes[node].host
            vm_id = sim.cluster.guest(f"g{node}").vm_id
            vm = host.vm(vm_id)
            h = host.counter.read()  # the simulated clock has not moved
            assert [(s.guest_id, s.vm_id, s.vcpu_index) for s in batch.samples] == [
                (f"g{node}", vm_id, 0),
                (f"g{node}", vm_id, 1),
            ]
            for s in batch.samples:
                assert (s.host_counter, s.cntvct, s.voffset, s.running) == (
                    h,
                    h - vm.voffset,
                    vm.voffset,
                    True,
                )

        record = await sim.cluster.migrate("ga", "b", Method.VM_COUNTER_OFFSET, wait=True)
        assert record.phase is Phase.SUCCEEDED, record.reason
        items = await read_until(
            call,
            lambda items: any(i.migration.migration.phase == cpb.MIGRATION_PHASE_SUCCEEDED for i in items),
        )
        items += await read_until(
            call,
            lambda items: any(
                s.vm_id == f"ga@{record.migration_id}" and s.node_id == "b"
                for i in items
                if i.HasField("samples")
                for s in i.samples.samples
            ),
        )
        phases = [
            i.migration.migration.phase for i in items if i.HasField("migration") and not i.migration.step
        ]
        assert phases == [
            cpb.MIGRATION_PHASE_PENDING,
            cpb.MIGRATION_PHASE_SCHEDULING,
            cpb.MIGRATION_PHASE_SCHEDULED,
            cpb.MIGRATION_PHASE_PREPARING_TARGET,
            cpb.MIGRATION_PHASE_TARGET_READY,
            cpb.MIGRATION_PHASE_RUNNING,
            cpb.MIGRATION_PHASE_SUCCEEDED,
        ]
        steps = [i.migration.step for i in items if i.HasField("migration") and i.migration.step]
        assert steps == ["prepare", "pause", "snapshot", "transfer", "resume", "cleanup"]
        moved = [s for i in items if i.HasField("samples") for s in i.samples.samples if s.node_id == "b"]
        assert {s.guest_id for s in moved if s.vm_id.startswith("ga")} == {"ga"}

        # Node b goes down: a health event, and the collector stops streaming from it.
        await sim.nodes["b"].server.stop(None)
        await sim.cluster.check_health()
        items = await read_until(call, lambda items: any(i.HasField("node") for i in items))
        (down,) = [i.node.node for i in items if i.HasField("node")]
        assert (down.node_id, down.healthy) == ("b", False)
        await wait_for(lambda: sim.cluster.collector.streaming == {"a"}, "streaming from a only")
        call.cancel()


@pytest.mark.asyncio
async def test_destination_vm_is_attributed_during_migration() -> None:
    async with watched_cluster(("a", "b")) as (sim, stub):
        in_transfer = asyncio.Event()
        proceed = asyncio.Event()

        async def hold(record: object) -> None:
            in_transfer.set()
            await proceed.wait()

        sim.cluster.transfer_hook = hold
        call = watch(stub, guest_ids=["ga"])
        task = asyncio.create_task(sim.cluster.migrate("ga", "b", Method.AUTO, "m1", wait=True))
        await in_transfer.wait()
        # Destination VM "ga@m1" exists (paused) on b; the guest still belongs to a.
        await read_until(
            call,
            lambda items: any(
                s.node_id == "b" for i in items if i.HasField("samples") for s in i.samples.samples
            ),
        )
        proceed.set()
        await task
        items = await read_until(call, lambda items: sum(len(i.samples.samples) for i in items) > 20)
        call.cancel()
        seen = [(s.node_id, s.vm_id, s.guest_id) for i in items for s in i.samples.samples]
        assert set(seen) <= {("b", "ga@m1", "ga"), ("a", "ga@1", "ga")}


@pytest.mark.asyncio
async def test_filters() -> None:
    async with watched_cluster(("a", "b", "c")) as (sim, stub):
        await sim.cluster.create_guest("ga2", 1, WorkloadSpec(PERIOD), "a")
        by_node = watch(stub, node_ids=["a"])
        by_guest = watch(stub, guest_ids=["ga2"])
        events = watch(stub, events_only=True, node_ids=["b", "c"])
        node_items = await read_until(by_node, lambda items: sum(i.HasField("samples") for i in items) >= 5)
        guest_items = await read_until(by_guest, lambda items: sum(i.HasField("samples") for i in items) >= 5)
        await sim.cluster.migrate("gb", "c", Method.AUTO, "mb", wait=True)
        await sim.cluster.migrate("gc", "a", Method.AUTO, "mc", wait=True)
        event_items = await read_until(
            events,
            lambda items: (
                sum(i.migration.migration.phase == cpb.MIGRATION_PHASE_SUCCEEDED for i in items) == 2
            ),
        )
        node_items += await read_until(
            by_node,
            lambda items: any(i.migration.migration.phase == cpb.MIGRATION_PHASE_SUCCEEDED for i in items),
        )
        guest_items += await read_until(by_guest, lambda items: len(items) >= 3)
        for call in (by_node, by_guest, events):
            call.cancel()

        assert [i.node.node.node_id for i in node_items if i.HasField("node")] == ["a"]
        assert sample_nodes(node_items) == {"a"}
        assert {s.guest_id for i in node_items if i.HasField("samples") for s in i.samples.samples} <= {
            "ga",
            "ga2",
            "gc",
        }
        assert {i.migration.migration.migration_id for i in node_items if i.HasField("migration")} == {"mc"}

        # The guest filter cuts node a's batches (ga: 2 vCPUs, ga2: 1) down to ga2's sample.
        guest_batches = [i.samples for i in guest_items if i.HasField("samples")]
        assert guest_batches and all(
            [(s.guest_id, s.vcpu_index) for s in b.samples] == [("ga2", 0)] for b in guest_batches
        )
        assert not any(i.HasField("migration") for i in guest_items)
        assert [i.node.node.node_id for i in guest_items if i.HasField("node")] == ["a", "b", "c"]

        assert not any(i.HasField("samples") for i in event_items)
        assert [i.node.node.node_id for i in event_items if i.HasField("node")] == ["b", "c"]
        assert {i.migration.migration.migration_id for i in event_items if i.HasField("migration")} == {
            "mb",
            "mc",
        }


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "request_fields",
    [{"node_ids": ["a", "zz"]}, {"guest_ids": ["nope"]}, {"node_ids": ["a"], "guest_ids": ["ga", "gx"]}],
)
async def test_unknown_ids_are_not_found(request_fields: dict[str, object]) -> None:
    async with watched_cluster(("a",)) as (sim, stub):
        call = watch(stub, **request_fields)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert sim.cluster.telemetry.subscribers == 0


@pytest.mark.asyncio
async def test_slow_subscriber_drops_are_counted() -> None:
    async with watched_cluster(("a", "b"), hub_buffer=4) as (sim, stub):
        # Big batches fill the transport windows quickly once the client stops reading.
        await sim.cluster.create_guest("big", 200, WorkloadSpec(PERIOD), "a")
        sim.cluster.collector.rate_hz = 1000.0
        call = watch(stub)
        await read_until(call, lambda items: len(items) == 3)
        hub = sim.cluster.telemetry
        await wait_for(lambda: hub.dropped_total > 0, "hub drops", timeout_s=20)
        items = await read_until(call, lambda items: bool(items) and items[-1].dropped > 0, timeout_s=20)
        drops = [i.dropped for i in items]
        assert drops == sorted(drops)
        assert 0 < drops[-1] <= hub.dropped_total
        later = await read_until(call, lambda items: len(items) == 5)
        assert all(i.dropped >= drops[-1] for i in later)
        call.cancel()


@pytest.mark.asyncio
async def test_cancel_unsubscribes_and_node_streams_close() -> None:
    async with watched_cluster(("a", "b")) as (sim, stub):
        call = watch(stub)
        await read_until(call, lambda items: sample_nodes(items) == {"a", "b"})
        assert sim.cluster.telemetry.subscribers == 1
        assert sim.cluster.collector.streaming == {"a", "b"}
        call.cancel()
        await wait_for(lambda: sim.cluster.telemetry.subscribers == 0, "unsubscribe")
        await wait_for(lambda: not sim.cluster.collector.streaming, "node streams closed")
        await wait_for(
            lambda: not [t for t in asyncio.all_tasks() if t.get_name().startswith("telemetry-sampler-")],
            "node sampler tasks gone",
        )


@pytest.mark.asyncio
async def test_broken_node_stream_is_reopened_after_backoff() -> None:
    host = Host("n1", FEATURES, ManualClock(), counter_base=DAY_TICKS, clock_mode=ClockMode.SIMULATED)
    vm = host.create_vm("v")
    vm.create_vcpu(0)
    streams = TelemetryStreams()
    server, port, health = build_server(host, telemetry=streams)
    await server.start()
    await mark_serving(health)
    cluster = Cluster(health_interval_s=0)
    cluster.collector.rate_hz = 200.0
    cluster.collector.backoff_initial_s = 0.05
    try:
        await cluster.register_node("n1", f"127.0.0.1:{port}")
        cluster.start()
        sub = cluster.telemetry.subscribe()
        item = await asyncio.wait_for(sub.queue.get(), 5)
        assert item is not None and item.samples.samples[0].vm_id == "v"
        assert (item.samples.sequence, streams.open_streams) == (0, 1)
        streams.close()  # the node ends the stream (as when it stops)
        # Batches until the new stream's first one (sequence numbers start again).
        while True:
            item = await asyncio.wait_for(sub.queue.get(), 5)
            assert item is not None
            if item.samples.sequence == 0:
                break
        assert cluster.collector.reconnects_total == 1
        assert streams.open_streams == 1
        cluster.telemetry.unsubscribe(sub)
        await wait_for(lambda: streams.open_streams == 0, "stream closed when unwatched")
    finally:
        await cluster.stop()
        await server.stop(None)


@pytest.mark.asyncio
async def test_events_only_stream_reports_a_node_going_down() -> None:
    async with watched_cluster(("a",)) as (sim, stub):
        call = watch(stub, events_only=True)
        await read_until(call, lambda items: len(items) == 1)
        await sim.nodes["a"].server.stop(None)
        await sim.cluster.check_health()
        items = await read_until(call, lambda items: len(items) == 1)
        assert (items[0].node.node.node_id, items[0].node.node.healthy) == ("a", False)
        assert items[0].node.node.last_error == "health check failed"
        call.cancel()
