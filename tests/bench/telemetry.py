"""Telemetry throughput benchmark: `python tests/bench/telemetry.py [--seconds N] [--quick]`.

Prints one table: vCPU samples per second delivered end to end, and the CPU time each
process spends per delivered sample. Every node is a real `kvmtimer node` process
(simulated clock, so guests take no timer interrupts and only telemetry costs CPU), read
over gRPC on 127.0.0.1 by a client in this process:

- node stream: Node.WatchTelemetry at 1 kHz over VCPUS vCPUs (offered = VCPUS x 1000
  samples/s); one sampling round per batch, or max_batch pieces (rounds merged when the
  client lags).
- controller stream: the same node plus a controller in its own process (Cluster, its
  node-stream collector at 1 kHz, gRPC server); this process reads
  Controller.WatchTelemetry (samples carry guest ids).
- core only: node.core.telemetry.sample_round + the node's BatchEncoder in this process,
  no gRPC and no serialisation of the batch: the ceiling of a node's sampler.

Goal (issue 5): >= 200k samples/s through a node gRPC stream, batched. Each row warms up
for 1 s, then measures --seconds (default 3). "offered" is vCPUs x rate; what a process
cannot keep up with is either dropped (bounded buffers, counted in the stream's `dropped`)
or not sampled at all (a sampler running late skips rounds), so read "delivered". CPU
columns are process CPU time (user + system, all threads) per delivered sample. The
machine's other load only ever slows a row down.

MQTT rows (>= 50k samples/s through mosquitto) belong in `mqtt_rows()` below.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import grpc
from kvmtimer.v1 import controller_pb2 as cpb
from kvmtimer.v1 import controller_pb2_grpc, node_pb2_grpc
from kvmtimer.v1 import node_pb2 as pb

from controller.cli.views import table
from node.core.clock import ManualClock
from node.core.features import ClockMode, HostFeatures
from node.core.host import Host
from node.core.telemetry import MAX_RATE_HZ, sample_round, select_vms
from node.service.telemetry import BatchEncoder
from tests.bench import telemetry_mqtt
from tests.support.mqtt import mosquitto_binary
from tests.support.nodes import node_process

GOAL_GRPC_SAMPLES_PER_S = 200_000
RATE_HZ = MAX_RATE_HZ
WARMUP_S = 1.0


@dataclass(frozen=True, slots=True)
class Row:
    """One measured line of the table."""

    path: str  # what the samples went through
    vcpus: int  # vCPUs sampled
    max_batch: int  # samples per batch asked for (0 = one round per batch)
    offered_per_s: float  # vCPUs x rate
    delivered_per_s: float  # samples the client read per second
    dropped_per_s: float  # drops reported in the stream per second
    batches_per_s: float  # messages the client read per second
    cpu_us: dict[str, float]  # process -> CPU microseconds per delivered sample


# --- process CPU time ------------------------------------------------------------------


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used by some processes (and this one) between start() and stop()."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        now = {name: process_cpu_s(pid) for name, pid in self.pids.items()}
        now["client"] = time.process_time()
        return now

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> None:
        end = self._now()
        self.used = {name: end[name] - self._start[name] for name in end}


# --- set-up ------------------------------------------------------------------------------


@contextlib.contextmanager
def bench_node() -> Iterator[tuple[int, str]]:
    """A `kvmtimer node` process (simulated clock): (pid, address)."""
    with node_process(["--node-id", "bench", "--clock", "simulated"]) as node:
        yield node.proc.pid, node.address


async def add_vms(stub: node_pb2_grpc.NodeStub, vms: int, vcpus: int) -> None:
    for v in range(vms):
        vm_id = f"vm-{v}"
        calls = [pb.BatchCall(create_vm=pb.CreateVmRequest(vm_id=vm_id))]
        calls += [
            pb.BatchCall(create_vcpu=pb.CreateVcpuRequest(vm_id=vm_id, vcpu_index=i)) for i in range(vcpus)
        ]
        await stub.Batch(pb.BatchRequest(calls=calls))


def _serve_controller(node_address: str, rate_hz: float, conn: Connection) -> None:
    """Child process: a Cluster with the node registered, its collector at `rate_hz`, a gRPC server."""
    from controller.service.cluster import Cluster
    from controller.service.server import build_server, mark_serving
    from node.runtime.logs import configure_logging

    configure_logging("warning", json=True)

    async def main() -> None:
        cluster = Cluster(health_interval_s=0)
        cluster.collector.rate_hz = rate_hz
        await cluster.register_node("bench", node_address)
        server, port, health = build_server(cluster)
        await server.start()
        await mark_serving(health)
        cluster.start()
        conn.send(port)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # until told to stop
        await cluster.stop()
        await server.stop(grace=None)

    asyncio.run(main())


@contextlib.contextmanager
def bench_controller(node_address: str) -> Iterator[tuple[int, str]]:
    """A controller in its own process, collecting from the node at RATE_HZ: (pid, address)."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve_controller, args=(node_address, RATE_HZ, child), daemon=True)
    proc.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("the controller process did not start")
        port = parent.recv()
        assert proc.pid is not None
        yield proc.pid, f"127.0.0.1:{port}"
    finally:
        with contextlib.suppress(OSError):
            parent.send("stop")
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()


# --- measuring a stream ----------------------------------------------------------------


async def measure(
    stream: AsyncIterator[tuple[int, int]], seconds: float, meter: CpuMeter
) -> tuple[float, float, float]:
    """(samples/s, dropped/s, batches/s) over `seconds` after WARMUP_S; `stream` yields (samples, dropped)."""
    warm_until = time.perf_counter() + WARMUP_S
    async for _, _ in stream:
        if time.perf_counter() >= warm_until:
            break
    samples = batches = 0
    first_dropped: int | None = None
    dropped = 0
    meter.start()
    start = time.perf_counter()
    async for n, dropped in stream:
        if first_dropped is None:
            first_dropped = dropped
        samples += n
        batches += 1
        if time.perf_counter() - start >= seconds:
            break
    wall = time.perf_counter() - start
    meter.stop()
    return samples / wall, (dropped - (first_dropped or 0)) / wall, batches / wall


def cpu_per_sample(meter: CpuMeter, samples: float) -> dict[str, float]:
    return {name: used / samples * 1e6 if samples else float("nan") for name, used in meter.used.items()}


async def node_row(vms: int, vcpus_per_vm: int, max_batch: int, seconds: float) -> Row:
    with bench_node() as (pid, address):
        async with grpc.aio.insecure_channel(address) as channel:
            stub = node_pb2_grpc.NodeStub(channel)
            await add_vms(stub, vms, vcpus_per_vm)
            call = stub.WatchTelemetry(pb.WatchTelemetryRequest(rate_hz=RATE_HZ, max_batch=max_batch))

            async def stream() -> AsyncIterator[tuple[int, int]]:
                async for batch in call:
                    yield len(batch.samples), batch.dropped

            meter = CpuMeter({"node": pid})
            delivered, dropped, batches = await measure(stream(), seconds, meter)
            call.cancel()
    vcpus = vms * vcpus_per_vm
    return Row(
        "gRPC node stream",
        vcpus,
        max_batch,
        vcpus * RATE_HZ,
        delivered,
        dropped,
        batches,
        cpu_per_sample(meter, delivered * seconds),
    )


async def controller_row(guests: int, vcpus_per_guest: int, seconds: float) -> Row:
    with bench_node() as (node_pid, node_address), bench_controller(node_address) as (ctl_pid, address):
        async with grpc.aio.insecure_channel(address) as channel:
            stub = controller_pb2_grpc.ControllerStub(channel)
            for g in range(guests):
                await stub.CreateGuest(
                    cpb.CreateGuestRequest(guest_id=f"g{g}", vcpus=vcpus_per_guest, node_id="bench")
                )
            call = stub.WatchTelemetry(cpb.WatchClusterTelemetryRequest())

            async def stream() -> AsyncIterator[tuple[int, int]]:
                async for item in call:
                    if item.HasField("samples"):
                        samples = item.samples.samples
                        assert samples[0].guest_id  # the collector attributed them
                        yield len(samples), item.dropped

            meter = CpuMeter({"node": node_pid, "controller": ctl_pid})
            delivered, dropped, batches = await measure(stream(), seconds, meter)
            call.cancel()
    vcpus = guests * vcpus_per_guest
    return Row(
        "gRPC controller stream",
        vcpus,
        0,
        vcpus * RATE_HZ,
        delivered,
        dropped,
        batches,
        cpu_per_sample(meter, delivered * seconds),
    )


def core_row(vms: int, vcpus_per_vm: int, seconds: float) -> Row:
    """sample_round + BatchEncoder back to back in this process (no gRPC, no clock pacing)."""
    host = Host("bench", HostFeatures(), ManualClock(), clock_mode=ClockMode.SIMULATED)
    for v in range(vms):
        vm = host.create_vm(f"vm-{v}")
        for i in range(vcpus_per_vm):
            vm.create_vcpu(i)
    encoder = BatchEncoder()
    chosen = select_vms(host)
    rounds = 0
    meter = CpuMeter({})
    meter.start()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        encoder.encode(sample_round(host, chosen))
        rounds += 1
    wall = time.perf_counter() - start
    meter.stop()
    vcpus = vms * vcpus_per_vm
    samples = rounds * vcpus
    return Row("core: sample + encode", vcpus, 0, float("nan"), samples / wall, 0.0, rounds / wall, {
        "client": meter.used["client"] / samples * 1e6
    })  # fmt: skip


def grpc_rows(args: argparse.Namespace) -> list[Row]:
    seconds = args.seconds
    node_cases = [(1, 64, 0), (4, 64, 0), (8, 64, 0), (8, 64, 2048)]
    controller_cases = [(2, 128), (4, 128)]
    if args.quick:
        node_cases, controller_cases = [(4, 64, 0)], [(2, 128)]
    rows = [asyncio.run(node_row(v, n, mb, seconds)) for v, n, mb in node_cases]
    rows += [asyncio.run(controller_row(g, n, seconds)) for g, n in controller_cases]
    rows.append(core_row(8, 64, seconds))
    return rows


# --- MQTT ------------------------------------------------------------------------------------
# Owned by the MQTT telemetry work: measure samples/s end to end through mosquitto (goal
# >= 50k samples/s, batched) and return Rows like grpc_rows() does; print_table() shows them.


MQTT_VCPUS = 256  # vCPUs per sampling round fed to the MQTT bridge


def mqtt_rows(args: argparse.Namespace) -> list[Row]:
    """Hub -> MQTT bridge -> mosquitto -> a subscriber process (tests/bench/telemetry_mqtt.py):
    batched per vCPU, and (without --quick) one sample per message. "controller" CPU is this
    process (bridge, JSON, publisher), "client" the subscriber's."""
    if mosquitto_binary() is None:
        print("MQTT rows skipped: no mosquitto binary (apt-get install mosquitto)", file=sys.stderr)
        return []
    measured = asyncio.run(telemetry_mqtt.measure(args.seconds, MQTT_VCPUS, quick=args.quick))
    return [
        Row(
            path=f"MQTT {r.name}",
            vcpus=r.vcpus,
            max_batch=r.max_samples,
            offered_per_s=r.sent / r.seconds,
            delivered_per_s=r.samples_per_s,
            dropped_per_s=r.dropped / r.seconds,
            batches_per_s=r.messages / r.seconds,
            cpu_us={
                "controller": r.publisher_cpu_s / max(r.samples, 1) * 1e6,
                "client": r.subscriber_cpu_s / max(r.samples, 1) * 1e6,
            },
        )
        for r in measured
    ]


# --- output ----------------------------------------------------------------------------------

PROCESSES = ("node", "controller", "client")


def _num(value: float, fmt: str = ",.0f") -> str:
    return "-" if value != value else format(value, fmt)  # NaN -> "-"


def print_table(rows: list[Row], out: Callable[[str], None] = print) -> None:
    header = ["path", "vCPUs", "max_batch", "offered/s", "delivered/s", "dropped/s", "batches/s"]
    header += [f"{p} us/sample" for p in PROCESSES] + ["total us/sample"]
    lines: list[list[str]] = []
    for r in rows:
        cpu = [r.cpu_us.get(p, float("nan")) for p in PROCESSES]
        total = sum(c for c in cpu if c == c)
        lines.append(
            [
                r.path,
                str(r.vcpus),
                str(r.max_batch) if r.max_batch else "round",
                _num(r.offered_per_s),
                _num(r.delivered_per_s),
                _num(r.dropped_per_s),
                _num(r.batches_per_s),
                *(_num(c, ".2f") for c in cpu),
                _num(total, ".2f"),
            ]
        )
    head, *body = table(header, lines, numbers_right=True).split("\n")
    out(head)
    out("-" * len(head))
    for line in body:
        out(line)
    node_rows = [r for r in rows if r.path == "gRPC node stream"]
    if node_rows:
        best = max(node_rows, key=lambda r: r.delivered_per_s)
        verdict = "met" if best.delivered_per_s >= GOAL_GRPC_SAMPLES_PER_S else "MISSED"
        out(
            f"\ngoal >= {GOAL_GRPC_SAMPLES_PER_S:,} samples/s through a node gRPC stream: {verdict} "
            f"(best {best.delivered_per_s:,.0f}/s with {best.vcpus} vCPUs at {RATE_HZ:g} Hz)"
        )
    batched = [r for r in rows if r.path == "MQTT batched per vCPU"]
    if batched:
        rate = batched[0].delivered_per_s
        verdict = "met" if rate >= telemetry_mqtt.GOAL_SAMPLES_PER_S else "MISSED"
        goal = telemetry_mqtt.GOAL_SAMPLES_PER_S
        out(f"goal >= {goal:,} samples/s through mosquitto, batched: {verdict} ({rate:,.0f}/s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per row (default 3)")
    parser.add_argument("--quick", action="store_true", help="one node row and one controller row")
    args = parser.parse_args(argv)
    print(f"telemetry benchmark: {os.cpu_count()} CPUs, {args.seconds:g} s per row, rate {RATE_HZ:g} Hz\n")
    rows = grpc_rows(args) + mqtt_rows(args)
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
