"""Node.WatchTelemetry through a real in-process grpc.aio server (simulated clock).

Edge cases covered:
- batching: one round per batch by default; max_batch splits a round (4 + 2 for 6 vCPUs);
  sequence 0, 1, 2, ...; dropped 0 for a client that keeps up; contents exact (the simulated
  counter does not move unless stepped, and a StepClock shows up in later batches)
- filters: vm_ids keeps only those VMs; a VM destroyed under a filtered stream just disappears
- status codes: unknown VM -> NOT_FOUND; rate above 1 kHz, negative or NaN -> INVALID_ARGUMENT;
  rate 0 means the 10 Hz default
- slow consumer: a client that does not read makes the node drop whole rounds; every later batch
  reports the cumulative count, the node keeps answering other RPCs promptly meanwhile
- cancel: the client's cancel ends the stream and its sampler task on the node
- server stop: closing the node's telemetry ends open streams with status OK
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from kvmtimer.v1 import node_pb2 as pb
from kvmtimer.v1 import node_pb2_grpc

from node.core.clock import ManualClock
from node.core.features import ClockMode, EcvLevel, HostFeatures
from node.core.host import Host
from node.service.server import build_server, mark_serving
from node.service.telemetry import TelemetryStreams
from tests.support.wait import until

H0 = 86_400 * 25_000_000  # the host booted a day ago at 25 MHz
EOF = grpc.aio.EOF  # type: ignore[attr-defined]  # end-of-stream marker of call.read()


@dataclass
class Node:
    host: Host
    streams: TelemetryStreams
    stub: node_pb2_grpc.NodeStub


@contextlib.asynccontextmanager
async def telemetry_node(*, buffer_samples: int = 16_384) -> AsyncIterator[Node]:
    host = Host(
        "node-t",
        HostFeatures(ecv=EcvLevel.CNTPOFF, vhe=True),
        ManualClock(),
        counter_base=H0,
        clock_mode=ClockMode.SIMULATED,
    )
    streams = TelemetryStreams(buffer_samples=buffer_samples)
    server, port, health = build_server(host, telemetry=streams)
    await server.start()
    await mark_serving(health)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Node(host, streams, node_pb2_grpc.NodeStub(channel))
    finally:
        await channel.close(None)
        await server.stop(grace=None)


def add_vm(host: Host, vm_id: str, vcpus: int) -> None:
    vm = host.create_vm(vm_id)
    for index in range(vcpus):
        vm.create_vcpu(index)


async def first_batches(
    stub: node_pb2_grpc.NodeStub, count: int, **request: object
) -> list[pb.TelemetryBatch]:
    call = stub.WatchTelemetry(pb.WatchTelemetryRequest(**request))  # type: ignore[arg-type]
    batches: list[pb.TelemetryBatch] = []
    async for batch in call:
        batches.append(batch)
        if len(batches) == count:
            break
    call.cancel()
    return batches


async def wait_until_closed(streams: TelemetryStreams) -> None:
    await until(
        lambda: streams.open_streams == 0 and not sampler_tasks(),
        timeout_s=2.0,
        what=f"streams and sampler tasks closed ({streams.open_streams} / {sampler_tasks()} open)",
    )


def sampler_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("telemetry-sampler-") and not t.done()]


@pytest.mark.asyncio
async def test_one_round_per_batch_with_exact_contents() -> None:
    async with telemetry_node() as node:
        add_vm(node.host, "a", 3)
        node.host.step_clock(1000)
        add_vm(node.host, "b", 2)  # created 1000 ticks later: voffset H0 + 1000
        node.host.step_clock(500)
        batches = await first_batches(node.stub, 3, rate_hz=1000)

        assert [(len(b.samples), b.sequence, b.dropped) for b in batches] == [(5, 0, 0), (5, 1, 0), (5, 2, 0)]
        h = H0 + 1500
        realtime = node.host.counter.clock.realtime_ns()
        expected = [
            pb.TelemetrySample(
                node_id="node-t",
                vm_id=vm_id,
                vcpu_index=index,
                realtime_ns=realtime,
                host_counter=h,
                cntvct=h - voffset,
                cntpct=h,
                voffset=voffset,
                uses_cntpoff=True,
            )
            for vm_id, index, voffset in [
                ("a", 0, H0),
                ("a", 1, H0),
                ("a", 2, H0),
                ("b", 0, H0 + 1000),
                ("b", 1, H0 + 1000),
            ]
        ]
        for batch in batches:
            assert list(batch.samples) == expected
        await wait_until_closed(node.streams)


@pytest.mark.asyncio
async def test_max_batch_splits_rounds_and_clock_steps_show_up() -> None:
    async with telemetry_node() as node:
        add_vm(node.host, "a", 6)
        call = node.stub.WatchTelemetry(pb.WatchTelemetryRequest(rate_hz=1000, max_batch=4))
        sizes: list[int] = []
        sequences: list[int] = []
        counters: set[int] = set()
        async for batch in call:
            sizes.append(len(batch.samples))
            sequences.append(batch.sequence)
            assert batch.dropped == 0
            counters |= {s.host_counter for s in batch.samples}
            if len(sizes) == 6:
                await node.stub.StepClock(pb.StepClockRequest(delta_ticks=250))
            if H0 + 250 in counters and len(sizes) % 2 == 0:
                break
        call.cancel()
        assert sizes == [4, 2] * (len(sizes) // 2)
        assert sequences == list(range(len(sizes)))
        assert counters == {H0, H0 + 250}
        await wait_until_closed(node.streams)


@pytest.mark.asyncio
async def test_vm_filter_and_destroyed_vm_disappears() -> None:
    async with telemetry_node() as node:
        for name in ("a", "b", "c"):
            add_vm(node.host, name, 2)
        call = node.stub.WatchTelemetry(pb.WatchTelemetryRequest(rate_hz=1000, vm_ids=["c", "a"]))
        seen: list[list[tuple[str, int]]] = []
        async for batch in call:
            seen.append([(s.vm_id, s.vcpu_index) for s in batch.samples])
            if len(seen) == 2:
                await node.stub.DestroyVm(pb.DestroyVmRequest(vm_id="c"))
            if seen[-1] == [("a", 0), ("a", 1)]:
                break
        call.cancel()
        assert seen[0] == [("c", 0), ("c", 1), ("a", 0), ("a", 1)]
        assert set(map(tuple, seen)) == {
            (("c", 0), ("c", 1), ("a", 0), ("a", 1)),
            (("a", 0), ("a", 1)),
        }
        await wait_until_closed(node.streams)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("request_fields", "code"),
    [
        ({"vm_ids": ["a", "nope"]}, grpc.StatusCode.NOT_FOUND),
        ({"rate_hz": 1000.5}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"rate_hz": 5000.0}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"rate_hz": -1.0}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"rate_hz": math.nan}, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_refused_requests(request_fields: dict[str, object], code: grpc.StatusCode) -> None:
    async with telemetry_node() as node:
        add_vm(node.host, "a", 1)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await first_batches(node.stub, 1, **request_fields)
        assert err.value.code() == code
        assert node.streams.open_streams == 0


@pytest.mark.asyncio
async def test_rate_zero_means_ten_hz() -> None:
    async with telemetry_node() as node:
        add_vm(node.host, "a", 1)
        start = time.monotonic()
        batches = await first_batches(node.stub, 4, rate_hz=0)
        # Rounds at 0, 100, 200, 300 ms: a 1 kHz stream would take 3 ms.
        assert time.monotonic() - start >= 0.28
        assert [b.sequence for b in batches] == [0, 1, 2, 3]


@pytest.mark.asyncio
async def test_slow_consumer_drops_are_counted_and_node_stays_responsive() -> None:
    async with telemetry_node(buffer_samples=200) as node:
        add_vm(node.host, "big", 50)
        call = node.stub.WatchTelemetry(pb.WatchTelemetryRequest(rate_hz=1000))
        first = await call.read()
        assert isinstance(first, pb.TelemetryBatch)
        assert (first.sequence, first.dropped, len(first.samples)) == (0, 0, 50)
        # The client stops reading; transport windows fill, then the node's buffer.

        async def dropping_and_responsive() -> bool:
            start = time.monotonic()
            info = await node.stub.GetHostInfo(pb.GetHostInfoRequest(), timeout=2)
            assert info.vcpu_count == 50
            assert time.monotonic() - start < 0.5
            return node.streams.dropped_total > 0

        await until(dropping_and_responsive, timeout_s=10, poll_s=0.05, what="the node dropping samples")
        # Reading again: the batches queued in transport come first, then ones reporting drops.
        last_sequence, last_dropped, received = 0, 0, 0
        while last_dropped == 0:
            batch = await asyncio.wait_for(call.read(), 5)
            assert isinstance(batch, pb.TelemetryBatch)
            assert batch.sequence == last_sequence + 1
            assert batch.dropped >= last_dropped
            last_sequence, last_dropped = batch.sequence, batch.dropped
            received += len(batch.samples)
        assert last_dropped % 50 == 0  # whole rounds
        assert last_dropped <= node.streams.dropped_total
        call.cancel()
        await wait_until_closed(node.streams)
        # Everything taken was either sent or dropped (plus at most what was buffered at cancel).
        assert node.streams.samples_total >= 50 + received


@pytest.mark.asyncio
async def test_cancel_ends_stream_and_sampler_task() -> None:
    async with telemetry_node() as node:
        add_vm(node.host, "a", 2)
        call = node.stub.WatchTelemetry(pb.WatchTelemetryRequest(rate_hz=1000))
        await call.read()
        assert node.streams.open_streams == 1
        assert len(sampler_tasks()) == 1
        call.cancel()
        assert await call.code() == grpc.StatusCode.CANCELLED
        await wait_until_closed(node.streams)


@pytest.mark.asyncio
async def test_closing_telemetry_ends_streams_with_ok() -> None:
    async with telemetry_node() as node:
        add_vm(node.host, "a", 2)
        calls = [node.stub.WatchTelemetry(pb.WatchTelemetryRequest(rate_hz=100)) for _ in range(3)]
        for call in calls:
            await call.read()
        assert node.streams.open_streams == 3
        node.streams.close()
        for call in calls:
            while await call.read() is not EOF:
                pass
            assert await call.code() == grpc.StatusCode.OK
        await wait_until_closed(node.streams)
