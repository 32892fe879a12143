"""MQTT telemetry throughput: `python tests/bench/telemetry_mqtt.py [--seconds N] [--vcpus N]`.

End to end through a real broker: vCPU sample batches go into a telemetry Hub (as the
controller's collector puts them), the MQTT bridge batches them per vCPU (schema 1 JSON),
the aiomqtt publisher sends them to a mosquitto started on a free 127.0.0.1 port, and a
subscriber in a SEPARATE process (`kvmtimer/guests/+/vcpus/+/samples`) counts the samples
it receives. Rows:

- batched: the default bridge (one message per vCPU per 100 ms flush, up to 1000 samples);
  goal >= 50k samples/s;
- one sample per message (max_samples=1): what batching saves.

`--fleet` instead measures the shape of a 1000-guest `kvmtimer up` (2500 vCPUs, 2000 samples/s
as 100 node rounds, into the embedded amqtt broker in this process, as `up` runs it): messages
and drops with the bridge's default message budget and without one. Goal: no drops.

Each row reports samples/s delivered to the subscriber (first publish to last receipt),
messages/s, samples per message, the publishing process's CPU per sample (bridge + JSON +
publisher, all of this process) and the subscriber's, and the drops (must be 0: the
producer is paced by what the bridge has taken). Needs Debian's mosquitto.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kvmtimer.v1 import controller_pb2 as cpb
from kvmtimer.v1 import node_pb2 as pb

from controller.cli.views import table as views_table
from controller.telemetry.bridge import DEFAULT_MAX_MESSAGES_PER_S, TelemetryBridge
from controller.telemetry.hub import Hub
from node.runtime.mqtt import MqttPublisher, MqttSettings
from node.runtime.mqtt_schema import DEFAULT_MAX_SAMPLES, Topics
from tests.support.mqtt import Mosquitto, mosquitto_binary

GOAL_SAMPLES_PER_S = 50_000
IN_FLIGHT_BATCHES = 32  # producer pacing: batches published but not yet taken by the bridge
SETTLE_S = 10.0  # how long to wait for the last samples to arrive
ROW_TIMEOUT_S = 90.0  # a row's budget beyond its producing time

SUBSCRIBER = r"""
import asyncio, json, sys, time
import aiomqtt

async def main(port: int) -> None:
    samples = messages = size = 0
    first = last = 0.0
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-sub", max_queued_incoming_messages=0) as c:
        await c.subscribe("kvmtimer/guests/+/vcpus/+/samples", qos=0)
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.add_reader(sys.stdin.fileno(), lambda: done.done() or done.set_result(None))
        async def count() -> None:
            nonlocal samples, messages, size, first, last
            async for m in c.messages:
                payload = m.payload
                assert isinstance(payload, bytes)
                samples += len(json.loads(payload)["samples"])
                messages += 1
                size += len(payload)
                last = time.time()
                if not first:
                    first = last
        task = asyncio.create_task(count())
        await done
        task.cancel()
    cpu = time.process_time()
    print(json.dumps({"samples": samples, "messages": messages, "bytes": size, "first": first,
                      "last": last, "cpu_s": cpu}), flush=True)

asyncio.run(main(int(sys.argv[1])))
"""


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    vcpus: int  # vCPUs per sampling round
    max_samples: int  # samples per vCPU message at most
    sent: int  # samples the bridge took from the hub
    samples: int  # delivered to the subscriber
    seconds: float  # first publish -> last receipt
    messages: int
    bytes: int
    publisher_cpu_s: float
    subscriber_cpu_s: float
    dropped: int  # hub + publisher drops

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0


def make_batches(vcpus: int, rounds: int) -> list[cpb.ClusterTelemetry]:
    """`rounds` sampling rounds over `vcpus` vCPUs (8 per guest, 4 nodes), realistic values."""
    out = []
    t0 = time.time_ns()
    for r in range(rounds):
        samples = []
        for v in range(vcpus):
            h = 3 * 86_400 * 25_000_000 + r * 2_500 + v
            samples.append(
                pb.TelemetrySample(
                    node_id=f"node-{v % 4 + 1}",
                    vm_id=f"guest-{v // 8}@mig-1",
                    guest_id=f"guest-{v // 8}",
                    vcpu_index=v % 8,
                    realtime_ns=t0 + r * 100_000,
                    host_counter=h,
                    cntvct=h - 10**12,
                    cntpct=h - 10**12,
                    voffset=10**12,
                    poffset=(1 << 64) - 12345,
                    uses_cntpoff=v % 2 == 0,
                    traps_cntpct=v % 2 == 1,
                    trap_count=r,
                    vtimer_ctl=1,
                    vtimer_cval=h + 250_000,
                    ptimer_ctl=5,
                    ptimer_cval=h + 500_000,
                    running=True,
                )
            )
        out.append(cpb.ClusterTelemetry(samples=pb.TelemetryBatch(samples=samples, sequence=r)))
    return out


async def run_row(
    name: str, port: int, batches: list[cpb.ClusterTelemetry], seconds: float, max_samples: int
) -> Row:
    sub = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SUBSCRIBER, str(port), stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert sub.stdout is not None and sub.stdin is not None
        assert (await asyncio.wait_for(sub.stdout.readline(), 30)).strip() == b"ready"
        hub: Hub[cpb.ClusterTelemetry] = Hub()
        settings = MqttSettings("127.0.0.1", port, queue_size=100_000)
        publisher = MqttPublisher(settings, identifier=f"bench-{name}")
        bridge = TelemetryBridge(
            hub,
            publisher,
            topics=Topics(),
            controller_id="bench",
            max_samples=max_samples,
            status_interval_s=60,
        )
        publisher.start()
        assert await publisher.wait_connected(10), "no broker"
        bridge.start()
        published = 0
        cpu0, start = time.process_time(), time.time()
        deadline = time.monotonic() + seconds
        i = 0
        while time.monotonic() < deadline:
            # Pace the producer by what the bridge has taken, so the hub never drops.
            while published - bridge.items >= IN_FLIGHT_BATCHES and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0)
            hub.publish(batches[i % len(batches)])
            published += 1
            i += 1
        await bridge.stop()
        await publisher.stop()
        publisher_cpu = time.process_time() - cpu0
        sent = bridge.samples_in
        # Wait for the subscriber to have everything (or give up after SETTLE_S).
        await asyncio.sleep(min(1.0, SETTLE_S))
        sub.stdin.write(b"stop\n")
        await sub.stdin.drain()
        result = json.loads(await asyncio.wait_for(sub.stdout.readline(), SETTLE_S + 15))
        dropped = bridge.hub_dropped + publisher.stats.dropped_total
        if result["samples"] != sent:
            print(
                f"  note: {name}: sent {sent} samples, the subscriber got {result['samples']}",
                file=sys.stderr,
            )
        return Row(
            name,
            len(batches[0].samples.samples),
            max_samples,
            sent,
            result["samples"],
            max(result["last"] - start, 1e-9),
            result["messages"],
            result["bytes"],
            publisher_cpu,
            result["cpu_s"],
            dropped,
        )
    finally:
        if sub.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                sub.kill()
        await sub.wait()


def table(rows: list[Row]) -> str:
    headers = (
        "row",
        "samples/s",
        "msgs/s",
        "samples/msg",
        "MB/s",
        "pub CPU us/sample",
        "sub CPU us/sample",
        "dropped",
    )
    cells = []
    for r in rows:
        per_msg = r.samples / r.messages if r.messages else 0.0
        cells.append(
            (
                r.name,
                f"{r.samples_per_s:,.0f}",
                f"{r.messages / r.seconds:,.0f}",
                f"{per_msg:.1f}",
                f"{r.bytes / r.seconds / 1e6:.1f}",
                f"{r.publisher_cpu_s / max(r.samples, 1) * 1e6:.2f}",
                f"{r.subscriber_cpu_s / max(r.samples, 1) * 1e6:.2f}",
                str(r.dropped),
            )
        )
    return views_table(headers, cells, numbers_right=True)


async def measure(seconds: float, vcpus: int, *, quick: bool = False) -> list[Row]:
    """The batched row, and (unless `quick`) the one-sample-per-message row."""
    binary = mosquitto_binary()
    if binary is None:
        raise SystemExit("no mosquitto binary (apt-get install mosquitto)")
    batches = make_batches(vcpus, 50)
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(binary, Path(tmp))
        broker.start()
        try:
            cases = [("batched per vCPU", seconds, DEFAULT_MAX_SAMPLES)]
            if not quick:
                cases.append(("one sample per message", max(1.0, seconds / 2), 1))
            rows = []
            for name, row_seconds, max_samples in cases:
                try:
                    row = run_row(name, broker.port, batches, row_seconds, max_samples)
                    rows.append(await asyncio.wait_for(row, row_seconds + ROW_TIMEOUT_S))
                except TimeoutError:
                    print(f"  {name}: no result within {row_seconds + ROW_TIMEOUT_S:g} s", file=sys.stderr)
            return rows
        finally:
            broker.stop()


# --- the shape of a large `kvmtimer up` ----------------------------------------------------

FLEET_VCPUS = 2500  # 1000 guests of 1-4 vCPUs
FLEET_SAMPLES_PER_S = 2000  # up's telemetry budget: 0.8 Hz per vCPU
FLEET_NODES = 100
GOAL_FLEET_DROPS = 0


@dataclass(frozen=True, slots=True)
class FleetRow:
    name: str
    samples: int  # taken by the bridge
    published: int  # messages handed to the broker
    dropped: int  # messages and hub items lost
    waiting: int  # samples still buffered when the producing stopped
    queued: int  # messages still queued for the broker then
    seconds: float
    cpu_s: float  # this process: bridge, publisher and the embedded broker


async def fleet_row(name: str, seconds: float, budget: float) -> FleetRow:
    """The telemetry of a 1000-guest `up` into an embedded broker in this process, as `up` runs
    it: every node's sampling round as one hub item, 100 nodes at 0.8 Hz (2000 samples/s)."""
    from controller.telemetry.broker import embedded_broker

    per_node = FLEET_VCPUS // FLEET_NODES
    rounds = [make_batches(per_node, 1)[0] for _ in range(FLEET_NODES)]
    for n, item in enumerate(rounds):
        for v, s in enumerate(item.samples.samples):  # 25 vCPUs: guests of 4 vCPUs, one of 1
            s.node_id = f"node-{n + 1}"
            s.guest_id = s.vm_id = f"guest-{n}-{v // 4}"
            s.vcpu_index = v % 4
    async with embedded_broker() as broker:
        hub: Hub[cpb.ClusterTelemetry] = Hub()
        publisher = MqttPublisher(MqttSettings(broker.host, broker.port), identifier=f"bench-{name}")
        bridge = TelemetryBridge(
            hub,
            publisher,
            topics=Topics(),
            controller_id="bench",
            status_interval_s=60,
            max_messages_per_s=budget,
        )
        publisher.start()
        assert await publisher.wait_connected(10), "no broker"
        bridge.start()
        interval_s = per_node / FLEET_SAMPLES_PER_S  # one node's round after another
        cpu0, start = time.process_time(), time.monotonic()
        i = 0
        while (now := time.monotonic()) < start + seconds:
            due = start + i * interval_s
            if due > now:
                await asyncio.sleep(due - now)
            hub.publish(rounds[i % FLEET_NODES])
            i += 1
        elapsed = time.monotonic() - start
        waiting, queued = bridge.samples.pending, publisher.queued
        dropped = publisher.stats.dropped_total + bridge.hub_dropped
        published = publisher.stats.published
        cpu = time.process_time() - cpu0
        samples = bridge.samples_in
        await bridge.stop()
        await publisher.stop()
    return FleetRow(name, samples, published, dropped, waiting, queued, elapsed, cpu)


def fleet_table(rows: list[FleetRow]) -> str:
    headers = (
        "row",
        "samples/s in",
        "msgs/s out",
        "samples/msg",
        "queued at end",
        "dropped",
        "CPU % of a core",
        "drops goal",
    )
    cells = [
        (
            r.name,
            f"{r.samples / r.seconds:,.0f}",
            f"{r.published / r.seconds:,.0f}",
            f"{(r.samples - r.waiting) / max(r.published + r.queued + r.dropped, 1):.1f}",
            str(r.queued),
            str(r.dropped),
            f"{100 * r.cpu_s / r.seconds:.0f}",
            "MET" if r.dropped <= GOAL_FLEET_DROPS else "NOT MET",
        )
        for r in rows
    ]
    return views_table(headers, cells, numbers_right=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="producing time of the batched row (default 5)"
    )
    parser.add_argument("--vcpus", type=int, default=256, help="vCPUs per sampling round (default 256)")
    parser.add_argument(
        "--fleet",
        action="store_true",
        help=f"instead: a 1000-guest `up` ({FLEET_VCPUS} vCPUs, {FLEET_SAMPLES_PER_S} samples/s) into the "
        "embedded broker, with the default message budget and without one (one message per vCPU per flush)",
    )
    args = parser.parse_args(argv)
    if args.fleet:
        fleet = [
            asyncio.run(
                fleet_row(
                    f"budget {DEFAULT_MAX_MESSAGES_PER_S:g} msgs/s", args.seconds, DEFAULT_MAX_MESSAGES_PER_S
                )
            ),
            asyncio.run(fleet_row("no budget (before)", args.seconds, 1e9)),
        ]
        print(f"MQTT telemetry of a 1000-guest cluster into the embedded broker, {args.seconds:g} s each")
        print(fleet_table(fleet))
        return 0
    rows = asyncio.run(measure(args.seconds, args.vcpus))
    print(f"MQTT telemetry through mosquitto, {args.vcpus} vCPUs per batch")
    print(table(rows))
    if not rows:
        return 1
    best = rows[0].samples_per_s
    verdict = "meets" if best >= GOAL_SAMPLES_PER_S else "MISSES"
    print(f"batched: {best:,.0f} samples/s {verdict} the goal of {GOAL_SAMPLES_PER_S:,} samples/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
