"""Prometheus endpoints of node and controller, scraped over HTTP on 127.0.0.1 (port 0).

Edge cases covered:
- node: VMs / vCPUs gauges, timer traps counted exactly (nVHE traps every CNTP_* access) and
  kept after the VM is destroyed, delivered guest interrupts, open streams and samples sent
- two nodes in one process each have their own registry (no clash, separate values)
- node: the configured realtime skew and drift, and the current realtime offset, as gauges
- controller: nodes up, migrations by method and outcome (succeeded, failed via a broken
  transfer, cancelled), downtime histogram (exactly the simulated 0.5 s stop), counter error
  histogram (0 ticks for an offset method, the stop in ticks for BY_VALUE), each migration
  counted once however often it is scraped; telemetry drop counters present; MQTT messages,
  samples and drops by reason (no broker: every non-retained message dropped as disconnected)
- HTTP: 404 for other paths, 405 for other methods, the Prometheus text content type
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from kvmtimer.v1 import controller_pb2 as cpb
from kvmtimer.v1 import node_pb2 as pb
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from controller.core.errors import FailedPrecondition
from controller.core.migration import Method, MigrationRecord, Phase
from controller.telemetry.bridge import MqttTelemetry, TelemetryBridge
from controller.telemetry.hub import Hub
from controller.telemetry.metrics import MqttMetrics, controller_registry
from node.core.features import ApiProfile, EcvLevel, HostFeatures
from node.core.workload import WorkloadSpec
from node.runtime.metrics_http import MetricsServer, start_metrics
from node.runtime.mqtt import MqttPublisher, MqttSettings
from node.runtime.mqtt_schema import Topics
from node.service.metrics import node_registry
from node.service.telemetry import TelemetryStreams
from tests.support.cluster import CNTFRQ, sim_cluster
from tests.support.nodes import in_process_node

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
PERIOD = CNTFRQ // 100
PAUSED_S = 0.5


async def http_get(port: int, path: str = "/metrics", method: str = "GET") -> tuple[str, dict[str, str], str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    status, *header_lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    assert int(headers["Content-Length"]) == len(body)
    return status, headers, body.decode()


async def scrape(port: int) -> Samples:
    status, headers, body = await http_get(port)
    assert status == "HTTP/1.1 200 OK"
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


@contextlib.asynccontextmanager
async def serving(server: MetricsServer) -> AsyncIterator[int]:
    try:
        yield server.port
    finally:
        await server.stop()


@pytest.mark.asyncio
async def test_node_metrics_move_with_traps_interrupts_and_streams() -> None:
    nvhe = HostFeatures(ecv=EcvLevel.NI, vhe=False)
    async with in_process_node(nvhe, node_id="n1") as n1, in_process_node(node_id="n2") as n2:
        s1 = await start_metrics(node_registry(n1.host, TelemetryStreams()), ("127.0.0.1", 0))
        s2 = await start_metrics(node_registry(n2.host, TelemetryStreams()), ("127.0.0.1", 0))
        async with serving(s1) as port1, serving(s2) as port2:
            assert port1 != 0 and port2 != 0
            node = (("node_id", "n1"),)
            before = await scrape(port1)
            assert before[("kvmtimer_node_vms", node)] == 0
            assert before[("kvmtimer_node_timer_traps_total", node)] == 0

            host = n1.host
            vm = host.create_vm("v")
            vm.create_vcpu(0)
            vm.create_vcpu(1)
            reads = [pb.GuestOp(read=pb.SYS_REG_CNTP_CTL_EL0)] * 3
            await n1.stub.RunVcpu(pb.RunVcpuRequest(vm_id="v", vcpu_index=1, ops=reads))
            g = host.create_vm("g")
            g.create_vcpu(0)
            g.start_workload(WorkloadSpec(period_ticks=1000))
            g.resume()
            host.step_clock(5_500)  # five periods
            host.destroy_vm("v")
            after = await scrape(port1)
            assert after[("kvmtimer_node_vms", node)] == 1
            assert after[("kvmtimer_node_vcpus", node)] == 1
            assert after[("kvmtimer_node_timer_traps_total", node)] == 3  # nVHE: every CNTP_* read traps
            assert after[("kvmtimer_node_guest_interrupts_total", node)] == 5
            assert after[("kvmtimer_node_telemetry_streams", node)] == 0
            assert after[("kvmtimer_node_telemetry_dropped_samples_total", node)] == 0
            # The other node's registry is separate.
            other = await scrape(port2)
            assert other[("kvmtimer_node_vms", (("node_id", "n2"),))] == 0
            assert ("kvmtimer_node_vms", node) not in other


@pytest.mark.asyncio
async def test_node_metrics_count_stream_samples() -> None:
    async with in_process_node(node_id="n1") as n1:
        streams = TelemetryStreams()
        # Stream through `streams` directly (what the node's servicer does for each RPC).
        vm = n1.host.create_vm("v")
        vm.create_vcpu(0)
        vm.create_vcpu(1)
        server = await start_metrics(node_registry(n1.host, streams), ("127.0.0.1", 0))
        async with serving(server) as port:
            batches = streams.open(n1.host, 1000.0, [], 0).batches()
            await anext(batches)
            await anext(batches)
            metrics = await scrape(port)
            node = (("node_id", "n1"),)
            assert metrics[("kvmtimer_node_telemetry_streams", node)] == 1
            assert metrics[("kvmtimer_node_telemetry_samples_total", node)] == 4
            await batches.aclose()
            assert (await scrape(port))[("kvmtimer_node_telemetry_streams", node)] == 0


@pytest.mark.asyncio
async def test_node_metrics_show_the_configured_clock_effects() -> None:
    async with in_process_node(node_id="n1") as n1:
        server = await start_metrics(node_registry(n1.host, TelemetryStreams()), ("127.0.0.1", 0))
        async with serving(server) as port:
            node = (("node_id", "n1"),)
            before = await scrape(port)
            assert before[("kvmtimer_node_realtime_skew_seconds", node)] == 0
            assert before[("kvmtimer_node_realtime_drift_ppm", node)] == 0
            await n1.stub.SetClockEffects(
                pb.SetClockEffectsRequest(skew_ns=-3_000, drift_ppm=12.5, step_ns=500)
            )
            n1.host.step_clock(25_000_000)  # one second: 12.5 µs of drift
            after = await scrape(port)
            assert after[("kvmtimer_node_realtime_skew_seconds", node)] == -3_000 / 1e9
            assert after[("kvmtimer_node_realtime_drift_ppm", node)] == 12.5
            assert after[("kvmtimer_node_realtime_offset_seconds", node)] == (-3_000 + 500 + 12_500) / 1e9


@pytest.mark.asyncio
async def test_http_errors() -> None:
    async with in_process_node() as n:
        server = await start_metrics(node_registry(n.host, TelemetryStreams()), ("127.0.0.1", 0))
        async with serving(server) as port:
            assert (await http_get(port, "/nope"))[0] == "HTTP/1.1 404 Not Found"
            assert (await http_get(port, "/metrics", "POST"))[0] == "HTTP/1.1 405 Method Not Allowed"
            assert (await http_get(port, "/"))[0] == "HTTP/1.1 200 OK"


def _count(metrics: Samples, method: str, outcome: str) -> float:
    return metrics.get(("kvmtimer_migrations_total", (("method", method), ("outcome", outcome))), 0.0)


@pytest.mark.asyncio
async def test_controller_metrics_move_after_migrations() -> None:
    f64 = HostFeatures(ecv=EcvLevel.CNTPOFF, vhe=True, api_profile=ApiProfile.VM_COUNTER_OFFSET)
    async with sim_cluster([("a", f64), ("b", f64)]) as sim:
        sim.transfer_delay_ns = int(PAUSED_S * 1e9)
        server = await start_metrics(controller_registry(sim.cluster), ("127.0.0.1", 0))
        async with serving(server) as port:
            await sim.cluster.create_guest("g", 2, WorkloadSpec(PERIOD), "a")
            before = await scrape(port)
            assert before[("kvmtimer_controller_nodes_up", ())] == 2
            assert before[("kvmtimer_controller_guests", ())] == 1
            assert _count(before, "vm_counter_offset", "succeeded") == 0
            assert before[("kvmtimer_controller_telemetry_dropped_total", (("stage", "subscriber"),))] == 0
            assert before[("kvmtimer_controller_telemetry_dropped_total", (("stage", "node_stream"),))] == 0

            record = await sim.cluster.migrate("g", "b", Method.VM_COUNTER_OFFSET, wait=True)
            assert record.phase is Phase.SUCCEEDED, record.reason
            after = await scrape(port)
            assert _count(after, "vm_counter_offset", "succeeded") == 1
            offset = (("method", "vm_counter_offset"),)
            assert after[("kvmtimer_migration_downtime_seconds_count", offset)] == 1
            assert after[("kvmtimer_migration_downtime_seconds_sum", offset)] == PAUSED_S
            assert after[("kvmtimer_migration_downtime_seconds_bucket", (("le", "0.25"), *offset))] == 0
            assert after[("kvmtimer_migration_downtime_seconds_bucket", (("le", "0.5"), *offset))] == 1
            assert after[("kvmtimer_migration_counter_error_ticks_count", offset)] == 1
            assert after[("kvmtimer_migration_counter_error_ticks_sum", offset)] == 0
            assert after[("kvmtimer_migration_counter_error_ticks_bucket", (("le", "0.0"), *offset))] == 1

            # BY_VALUE: guest time stalls for the stop, the error is the stop in ticks.
            await sim.cluster.migrate("g", "a", Method.BY_VALUE, wait=True)

            # A transfer that breaks: the migration fails (guest stays put).
            async def broken(record: MigrationRecord) -> None:
                raise FailedPrecondition("transfer link down")

            sim.cluster.transfer_hook = broken
            failed = await sim.cluster.migrate("g", "b", Method.AUTO, wait=True)
            assert failed.phase is Phase.FAILED

            # Cancelled before it starts: held at the transfer until the cancel arrives.
            gate = asyncio.Event()

            async def held(record: MigrationRecord) -> None:
                await sim.cluster.cancel(record.migration_id)
                gate.set()

            sim.cluster.transfer_hook = held
            cancelled = await sim.cluster.migrate("g", "b", Method.AUTO, wait=True)
            assert gate.is_set() and cancelled.cancelled

            final = await scrape(port)
            again = await scrape(port)  # scraping twice counts nothing twice
            assert final == again
            by_value = (("method", "by_value"),)
            assert _count(final, "vm_counter_offset", "succeeded") == 1
            assert _count(final, "by_value", "succeeded") == 1
            assert _count(final, "vm_counter_offset", "failed") == 1
            assert _count(final, "vm_counter_offset", "cancelled") == 1
            assert final[("kvmtimer_migration_counter_error_ticks_sum", by_value)] == PAUSED_S * CNTFRQ
            assert final[("kvmtimer_migration_downtime_seconds_sum", by_value)] == PAUSED_S
            # Failed and cancelled migrations have no downtime sample.
            assert final[("kvmtimer_migration_downtime_seconds_count", offset)] == 1


@pytest.mark.asyncio
async def test_controller_mqtt_metrics_count_messages_samples_and_drops_by_reason() -> None:
    """Without a broker connection every message is dropped as `disconnected`; the metrics say so."""
    hub: Hub[cpb.ClusterTelemetry] = Hub()
    publisher = MqttPublisher(MqttSettings("127.0.0.1", 1), identifier="test")  # never started
    bridge = TelemetryBridge(hub, publisher, topics=Topics(), controller_id="c", status_interval_s=60)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MqttMetrics(MqttTelemetry(publisher, bridge)))
    bridge.start()
    samples = [pb.TelemetrySample(node_id="n", vm_id="g", vcpu_index=v, running=True) for v in range(3)]
    hub.publish(cpb.ClusterTelemetry(samples=pb.TelemetryBatch(samples=samples)))
    await bridge.stop()  # flushes: one message per vCPU, then the controller's offline status
    text = generate_latest(registry).decode()
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert got[("kvmtimer_controller_mqtt_samples_total", ())] == 3
    assert got[("kvmtimer_controller_mqtt_messages_total", ())] == 0
    # The 3 sample messages are dropped; the controller's retained statuses are kept for the
    # next connection, not dropped.
    assert got[("kvmtimer_controller_mqtt_dropped_total", (("reason", "disconnected"),))] == 3
    assert got[("kvmtimer_controller_mqtt_dropped_total", (("reason", "queue_full"),))] == 0
    assert got[("kvmtimer_controller_mqtt_dropped_total", (("reason", "hub_items"),))] == 0
    assert got[("kvmtimer_controller_mqtt_samples_waiting", ())] == 0
