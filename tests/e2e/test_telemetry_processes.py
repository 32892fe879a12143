"""Telemetry and metrics of real `kvmtimer node` / `kvmtimer controller` processes (port 0 everywhere).

Covers: `--metrics-listen 127.0.0.1:0` logs `metrics_listening` with the bound port on both
processes and serves Prometheus text there; the controller's WatchTelemetry carries the node
process's samples with guest ids; the node's telemetry counters move once the controller
streams from it; the controller's metrics count a migration after it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
from collections.abc import Iterator, Sequence

import grpc
import pytest
from kvmtimer.v1 import controller_pb2 as cpb
from kvmtimer.v1 import controller_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.support.nodes import kvmtimer_process, wait_for_log_event

pytestmark = pytest.mark.e2e


@contextlib.contextmanager
def process(command: str, args: Sequence[str], listening: str) -> Iterator[tuple[int, int]]:
    """`kvmtimer COMMAND --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 ARGS`: (port, metrics port)."""
    listen = ["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]
    with kvmtimer_process(command, [*listen, *args]) as proc:
        metrics = wait_for_log_event(proc, "metrics_listening")
        ready = wait_for_log_event(proc, listening)
        assert isinstance(metrics["port"], int) and metrics["port"] > 0
        assert isinstance(ready["port"], int)
        yield ready["port"], metrics["port"]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        body = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


@pytest.mark.asyncio
async def test_metrics_and_controller_stream_across_processes() -> None:
    node_args = ["--node-id", "n1", "--clock", "simulated"]
    with (
        process("node", node_args, "node_listening") as (node_port, node_metrics),
        process("node", ["--node-id", "n2", "--clock", "simulated"], "node_listening") as (n2_port, _),
        process(
            "controller",
            [
                "--health-interval",
                "0",
                "--node",
                f"n1=127.0.0.1:{node_port}",
                "--node",
                f"n2=127.0.0.1:{n2_port}",
            ],
            "controller_listening",
        ) as (ctl_port, ctl_metrics),
    ):
        node = (("node_id", "n1"),)
        assert (await asyncio.to_thread(scrape, node_metrics))[("kvmtimer_node_vms", node)] == 0
        before = await asyncio.to_thread(scrape, ctl_metrics)
        assert before[("kvmtimer_controller_nodes_up", ())] == 2

        async with grpc.aio.insecure_channel(f"127.0.0.1:{ctl_port}") as channel:
            stub = controller_pb2_grpc.ControllerStub(channel)
            await stub.CreateGuest(cpb.CreateGuestRequest(guest_id="g", vcpus=3, node_id="n1"))
            call = stub.WatchTelemetry(cpb.WatchClusterTelemetryRequest(guest_ids=["g"]))
            samples: list[tuple[str, str, int]] = []

            async def read() -> None:
                async for item in call:
                    if item.HasField("samples"):
                        samples.extend((s.guest_id, s.node_id, s.vcpu_index) for s in item.samples.samples)
                    if len(samples) >= 6:
                        return

            await asyncio.wait_for(read(), 20)
            call.cancel()
            assert set(samples) == {("g", "n1", 0), ("g", "n1", 1), ("g", "n1", 2)}

            moved = await stub.Migrate(cpb.MigrateRequest(guest_id="g", destination="n2", wait=True))
            assert moved.phase == cpb.MIGRATION_PHASE_SUCCEEDED, moved.reason

        node_after = await asyncio.to_thread(scrape, node_metrics)
        assert node_after[("kvmtimer_node_telemetry_samples_total", node)] >= 6
        assert node_after[("kvmtimer_node_vms", node)] == 0  # the guest left
        after = await asyncio.to_thread(scrape, ctl_metrics)
        method = cpb.MigrationMethod.Name(moved.method).removeprefix("MIGRATION_METHOD_").lower()
        key = ("kvmtimer_migrations_total", (("method", method), ("outcome", "succeeded")))
        assert after[key] == 1
        assert after[("kvmtimer_controller_telemetry_samples_total", ())] >= 6
