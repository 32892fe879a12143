"""MQTT telemetry: the bridge's topic/payload mapping (fake Publisher) and, against a real
mosquitto started on a free loopback port, topics, payloads, retained statuses, last wills
and broker outages.

Edge cases covered:
- samples of several batches within one flush interval become one message per vCPU;
- beyond the bridge's message budget, vCPUs are flushed oldest first and the others collect
  more samples per message (none dropped);
- node health events and node load changes republish the retained node status;
- the controller's retained status: online with counters, offline "stopped" on a clean stop,
  offline "connection lost" (last will) when its connection is cut abruptly;
- a killed node process shows offline through its last will;
- the broker stops mid-run: migrations keep succeeding (none waits for the broker), drops are
  counted, and after the broker restarts on the same port the publisher reconnects, the
  retained statuses come back (the broker kept nothing) and events and samples flow again;
- no broker at all: the controller runs, everything is dropped and counted;
- a controller process with --mqtt and --metrics-listen exports its MQTT counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kvmtimer.v1 import controller_pb2 as cpb
from kvmtimer.v1 import node_pb2 as pb

from controller.core.migration import Method, Phase
from controller.service.telemetry import start_controller_telemetry
from controller.telemetry.bridge import MessageBudget, MqttTelemetry, TelemetryBridge
from controller.telemetry.broker import embedded_broker
from controller.telemetry.hub import Hub
from node.core.features import ApiProfile, EcvLevel, HostFeatures
from node.core.workload import WorkloadSpec
from node.runtime.mqtt import MqttPublisher, MqttSettings, parse_mqtt_url
from node.runtime.mqtt_schema import Topics, sample_dicts
from node.runtime.publisher import OutMessage
from tests.support.cluster import CNTFRQ, SimCluster, sim_cluster
from tests.support.mqtt import (
    NO_MOSQUITTO,
    Mosquitto,
    Proxy,
    Received,
    RecordingPublisher,
    free_port,
    mosquitto,
    mosquitto_binary,
    subscriber,
)
from tests.support.nodes import kvmtimer_command, node_process, wait_for_log_event
from tests.support.wait import until, until_sync

needs_mosquitto = pytest.mark.skipif(mosquitto_binary() is None, reason=NO_MOSQUITTO)

PERIOD = CNTFRQ // 100
NODES = [
    ("ecv-vhe", HostFeatures(ecv=EcvLevel.CNTPOFF, vhe=True, api_profile=ApiProfile.VM_COUNTER_OFFSET)),
    ("noecv", HostFeatures(ecv=EcvLevel.NI, vhe=True, api_profile=ApiProfile.BY_VALUE)),
]


def batch(guest: str, vcpus: int, t0: int, rounds: int, node: str = "ecv-vhe") -> cpb.ClusterTelemetry:
    samples = [
        pb.TelemetrySample(
            node_id=node,
            vm_id=guest,
            guest_id=guest,
            vcpu_index=v,
            realtime_ns=t0 + r,
            host_counter=10**12 + t0 + r,
            cntvct=t0 + r,
            cntpct=t0 + r,
            voffset=10**12,
            running=True,
        )
        for r in range(rounds)
        for v in range(vcpus)
    ]
    return cpb.ClusterTelemetry(samples=pb.TelemetryBatch(samples=samples))


def node_status(node_id: str, *, healthy: bool = True, guests: int = 0) -> cpb.NodeStatus:
    return cpb.NodeStatus(
        node_id=node_id,
        address="127.0.0.1:1",
        healthy=healthy,
        cntfrq_hz=CNTFRQ,
        ecv=2,
        vhe=True,
        api_profile=pb.API_PROFILE_VM_COUNTER_OFFSET,
        clock_mode=pb.CLOCK_MODE_SIMULATED,
        has_cntpoff=True,
        guest_count=guests,
        vcpu_count=guests,
        last_error="" if healthy else "health check failed",
    )


# --- the mapping, with a fake Publisher ---------------------------------------------------


@pytest.mark.asyncio
async def test_bridge_topics_and_payloads_with_fake_publisher() -> None:
    hub: Hub[cpb.ClusterTelemetry] = Hub()
    pub = RecordingPublisher()
    nodes = [node_status("n1")]
    bridge = TelemetryBridge(
        hub,
        pub,
        topics=Topics("lab/kt"),
        controller_id="ctl-1",
        address="127.0.0.1:7070",
        nodes=lambda: nodes,
        flush_interval_s=0.05,
        status_interval_s=0.2,
    )
    bridge.start()
    await until(lambda: pub.on("lab/kt/nodes/n1/status"))
    # Two batches before the bridge runs again: one message per vCPU holds both.
    hub.publish(batch("g1", 2, 0, 3))
    hub.publish(batch("g1", 2, 100, 2))
    hub.publish(batch("a/b", 1, 0, 1))
    migration = cpb.Migration(migration_id="m-1", guest_id="g1", method=cpb.MIGRATION_METHOD_BY_VALUE)
    migration.phase = cpb.MIGRATION_PHASE_RUNNING
    hub.publish(cpb.ClusterTelemetry(migration=cpb.MigrationEvent(migration=migration, step="pause")))
    hub.publish(cpb.ClusterTelemetry(node=cpb.NodeHealthEvent(node=node_status("n1", healthy=False))))
    await until(lambda: pub.on("lab/kt/guests/a_b/vcpus/0/samples"))
    nodes[0] = node_status("n1", guests=1)  # load changed: republished at the next status round
    await until(lambda: len(pub.on("lab/kt/nodes/n1/status")) >= 3, timeout_s=2.0)
    await bridge.stop()

    by_topic = {m.topic: m for m in pub.messages}
    for vcpu in (0, 1):
        topic = f"lab/kt/guests/g1/vcpus/{vcpu}/samples"
        (payload,) = pub.on(topic)
        assert (by_topic[topic].qos, by_topic[topic].retain) == (0, False)
        assert payload["schema"] == 1 and payload["vcpu"] == vcpu and payload["guest_id"] == "g1"
        rows = sample_dicts(payload)
        assert [r["realtime_ns"] for r in rows] == [0, 1, 2, 100, 101]
    events = pub.on("lab/kt/migrations/m-1/events")
    assert [(e["phase"], e["step"]) for e in events] == [("RUNNING", "pause")]
    assert (
        by_topic["lab/kt/migrations/m-1/events"].qos,
        by_topic["lab/kt/migrations/m-1/events"].retain,
    ) == (
        1,
        False,
    )
    statuses = pub.on("lab/kt/nodes/n1/status")
    assert [(s["status"], s["load"]) for s in statuses] == [
        ("online", {"vms": 0, "vcpus": 0}),
        ("offline", {"vms": 0, "vcpus": 0}),
        ("online", {"vms": 1, "vcpus": 1}),
    ]
    assert by_topic["lab/kt/nodes/n1/status"].retain and by_topic["lab/kt/nodes/n1/status"].qos == 1
    ctl = pub.on("lab/kt/controller/status")
    assert ctl[0]["status"] == "online" and ctl[0]["address"] == "127.0.0.1:7070"
    assert ctl[-1]["status"] == "offline" and ctl[-1]["reason"] == "stopped"
    telemetry = ctl[-1]["telemetry"]
    assert isinstance(telemetry, dict)
    assert telemetry["samples"] == 11 and telemetry["hub_dropped"] == 0
    assert all(m.retain for m in pub.messages if m.topic.endswith("/status"))
    assert hub.subscribers == 0  # the bridge let go of its subscription


@pytest.mark.asyncio
async def test_bridge_counts_what_the_hub_dropped() -> None:
    hub: Hub[cpb.ClusterTelemetry] = Hub(buffer=4)
    pub = RecordingPublisher()
    bridge = TelemetryBridge(hub, pub, topics=Topics(), controller_id="c", status_interval_s=60)
    bridge.start()
    for i in range(10):  # the bridge does not run in between: 6 items find the buffer full
        hub.publish(batch(f"g{i}", 1, 0, 1))
    await bridge.stop()
    assert bridge.hub_dropped == 7  # 6 on publish + the one stop() made room for
    assert bridge.items == 3


def test_message_budget_refills_at_its_rate_up_to_one_second() -> None:
    budget = MessageBudget(10)
    assert budget.available(0.0) == 10  # starts full
    budget.spend(10)
    assert budget.available(0.05) == 0  # half a message
    assert budget.available(0.35) == 3
    budget.spend(3)
    assert budget.available(100.0) == 10  # one second's worth at most
    budget.spend(15)  # messages that had to go: paid back first
    assert budget.available(100.2) == 0
    assert budget.available(100.65) == 1
    with pytest.raises(ValueError, match="positive"):
        MessageBudget(0)


@pytest.mark.asyncio
async def test_bridge_sends_fewer_larger_sample_messages_beyond_its_budget() -> None:
    """8 vCPUs and a budget of 4 messages/s: the first flush sends the 4 oldest vCPUs, the others
    wait and collect the next round's samples too; nothing is dropped, every vCPU's samples
    arrive in order."""
    hub: Hub[cpb.ClusterTelemetry] = Hub()
    pub = RecordingPublisher()
    bridge = TelemetryBridge(
        hub,
        pub,
        topics=Topics(),
        controller_id="c",
        flush_interval_s=0.05,
        status_interval_s=60,
        max_messages_per_s=4,
    )
    bridge.start()

    def sample_messages() -> list[dict[str, object]]:
        return [json.loads(m.payload) for m in pub.messages if m.topic.endswith("/samples")]

    hub.publish(batch("g", 8, 0, 1))
    await until(lambda: len(sample_messages()) >= 4)
    assert [m["vcpu"] for m in sample_messages()[:4]] == [0, 1, 2, 3]
    hub.publish(batch("g", 8, 100, 1))
    await until(lambda: sum(len(sample_dicts(m)) for m in sample_messages()) == 16, timeout_s=20)
    await bridge.stop()
    messages = sample_messages()
    assert len(messages) < 16  # vCPUs 4-7 sent both rounds in one message each
    for vcpu in range(8):
        rows = [r for m in messages if m["vcpu"] == vcpu for r in sample_dicts(m)]
        assert [r["realtime_ns"] for r in rows] == [0, 100]
    assert bridge.hub_dropped == 0 and bridge.samples.pending == 0


# --- against mosquitto ------------------------------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    if mosquitto_binary() is None:
        pytest.skip(NO_MOSQUITTO)
    with mosquitto(tmp_path) as b:
        yield b


def fast(url: str, prefix: str = "kvmtimer") -> MqttSettings:
    """Quick reconnects so outage tests stay short."""
    s = parse_mqtt_url(url)
    return MqttSettings(
        s.host, s.port, prefix=prefix, backoff_initial_s=0.05, backoff_max_s=0.3, timeout_s=2.0
    )


def payload_has(topic: str, **fields: object) -> Callable[[Received], bool]:
    return lambda m: m.topic == topic and all(m.payload.get(k) == v for k, v in fields.items())


async def migrate(sim: SimCluster, guest: str, destination: str) -> cpb.Migration:
    record = await asyncio.wait_for(sim.cluster.migrate(guest, destination, Method.AUTO, wait=True), 10)
    assert record.phase is Phase.SUCCEEDED, record.reason
    return cpb.Migration(migration_id=record.migration_id)


@needs_mosquitto
@pytest.mark.asyncio
async def test_controller_telemetry_through_mosquitto(broker: Mosquitto) -> None:
    async with sim_cluster(NODES) as sim, subscriber(broker.port, "kvmtimer/#") as live:
        telemetry = start_controller_telemetry(sim.cluster, fast(broker.url), address="127.0.0.1:7070")
        try:
            assert await telemetry.publisher.wait_connected(5)
            await sim.cluster.create_guest("g1", 2, WorkloadSpec(PERIOD), "ecv-vhe")
            sim.advance_s(0.5)
            m = await migrate(sim, "g1", "noecv")
            sim.cluster.telemetry.publish(batch("g1", 2, 0, 5, node="noecv"))
            topic = f"kvmtimer/migrations/{m.migration_id}/events"
            done = await live.wait_for(payload_has(topic, phase="SUCCEEDED"))
            record = done.payload["migration"]
            assert isinstance(record, dict)
            assert (record["source"], record["destination"], record["method"]) == (
                "ecv-vhe",
                "noecv",
                "BY_VALUE",
            )
            events = live.on(topic)
            assert all(e.qos == 1 and e.payload["schema"] == 1 for e in events)
            phases = [e.payload["phase"] for e in events if not e.payload["step"]]
            assert phases == [
                "PENDING",
                "SCHEDULING",
                "SCHEDULED",
                "PREPARING_TARGET",
                "TARGET_READY",
                "RUNNING",
                "SUCCEEDED",
            ]
            assert [e.payload["step"] for e in events if e.payload["step"]] == [
                "prepare",
                "pause",
                "snapshot",
                "transfer",
                "resume",
                "cleanup",
            ]
            sample_msg = await live.wait_for(lambda r: r.topic == "kvmtimer/guests/g1/vcpus/1/samples")
            assert sample_msg.qos == 0 and sample_msg.payload["node_id"] == "noecv"
            rows = sample_dicts(sample_msg.payload)
            assert [r["cntvct"] for r in rows] == [0, 1, 2, 3, 4]
            await live.wait_for(
                payload_has("kvmtimer/nodes/noecv/status", status="online", source="controller")
            )
        finally:
            await telemetry.stop()
        assert telemetry.dropped == 0
        await live.wait_for(payload_has("kvmtimer/controller/status", status="offline", reason="stopped"))

    # A client arriving later gets the retained statuses, flagged as retained.
    async with subscriber(broker.port, "kvmtimer/+/+/status") as late:
        node = await late.wait_for(lambda r: r.topic == "kvmtimer/nodes/ecv-vhe/status")
        assert node.retain and node.payload["status"] == "online"
        features = node.payload["features"]
        assert isinstance(features, dict)
        assert features == {
            "cntfrq_hz": CNTFRQ,
            "ecv": 2,
            "vhe": True,
            "has_cntpoff": True,
            "api_profile": "VM_COUNTER_OFFSET",
            "clock_mode": "SIMULATED",
        }
        await late.wait_for(lambda r: r.topic == "kvmtimer/nodes/noecv/status" and r.retain)
    async with subscriber(broker.port, "kvmtimer/controller/status") as late:
        ctl = await late.wait_for(lambda r: r.retain)
        assert (ctl.payload["status"], ctl.payload["reason"]) == ("offline", "stopped")


@needs_mosquitto
@pytest.mark.asyncio
async def test_controller_last_will_when_connection_is_cut(broker: Mosquitto) -> None:
    proxy = Proxy(broker.port)
    await proxy.start()
    telemetry: MqttTelemetry | None = None
    try:
        async with (
            sim_cluster(NODES[:1]) as sim,
            subscriber(broker.port, "kvmtimer/controller/status") as live,
        ):
            settings = MqttSettings("127.0.0.1", proxy.port, backoff_initial_s=5.0, backoff_max_s=5.0)
            telemetry = start_controller_telemetry(sim.cluster, settings)
            await live.wait_for(payload_has("kvmtimer/controller/status", status="online"))
            proxy.cut()  # no DISCONNECT packet: the broker publishes the will
            will = await live.wait_for(payload_has("kvmtimer/controller/status", status="offline"))
            assert will.payload["reason"] == "connection lost"
            assert will.payload["controller_id"] == telemetry.publisher.identifier
            await until(lambda: telemetry is not None and not telemetry.publisher.connected)
    finally:
        if telemetry is not None:
            await telemetry.stop()
        await proxy.close()


@needs_mosquitto
@pytest.mark.asyncio
@pytest.mark.e2e  # a real kvmtimer process
async def test_killed_node_process_shows_offline(broker: Mosquitto) -> None:
    args = ["--node-id", "node-k", "--clock", "simulated", "--mqtt", broker.url, "--mqtt-prefix", "t1"]
    async with subscriber(broker.port, "t1/nodes/node-k/status") as live:
        with node_process(args) as node:
            online = await live.wait_for(lambda r: r.payload["status"] == "online")
            assert online.payload["source"] == "node"
            assert online.payload["address"] == node.address
            assert online.payload["health"] == {"healthy": True, "last_error": ""}
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(timeout=10)
            offline = await live.wait_for(lambda r: r.payload["status"] == "offline")
            assert offline.payload == {
                "schema": 1,
                "node_id": "node-k",
                "status": "offline",
                "source": "node",
                "reason": "connection lost",
            }
    async with subscriber(broker.port, "t1/nodes/node-k/status") as late:
        retained = await late.wait_for(lambda r: r.retain)
        assert retained.payload["status"] == "offline"


@needs_mosquitto
@pytest.mark.asyncio
@pytest.mark.e2e  # a real kvmtimer process
async def test_stopped_node_process_publishes_offline_stopped(broker: Mosquitto) -> None:
    args = ["--node-id", "node-s", "--clock", "simulated", "--mqtt", broker.url]
    async with subscriber(broker.port, "kvmtimer/nodes/node-s/status") as live:
        with node_process(args) as node:
            await live.wait_for(lambda r: r.payload["status"] == "online")
            started = time.monotonic()
            node.proc.send_signal(signal.SIGTERM)
            assert node.proc.wait(timeout=10) == 0
            # Sending the final status does not wait out any timeout (5 s by default).
            assert time.monotonic() - started < 3.0
        # A clean stop says why.
        offline = await live.wait_for(lambda r: r.payload["status"] == "offline")
        assert offline.payload["reason"] == "stopped"


@contextlib.contextmanager
def controller_process(*args: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`kvmtimer controller --listen 127.0.0.1:0 ARGS`, until it logs controller_listening."""
    proc = subprocess.Popen(
        [*kvmtimer_command(), "controller", "--listen", "127.0.0.1:0", "--health-interval", "0", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        record = wait_for_log_event(proc, "controller_listening")
        port = record["port"]
        assert isinstance(port, int)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


@needs_mosquitto
@pytest.mark.asyncio
@pytest.mark.e2e  # a real kvmtimer process
async def test_controller_process_status_and_last_will(broker: Mosquitto) -> None:
    topic = "ctl/controller/status"
    async with subscriber(broker.port, topic) as live:
        with controller_process("--mqtt", broker.url, "--mqtt-prefix", "ctl") as (proc, port):
            online = await live.wait_for(lambda r: r.payload["status"] == "online")
            assert online.payload["address"] == f"127.0.0.1:{port}"
            assert online.payload["schema"] == 1
            proc.send_signal(signal.SIGKILL)
            will = await live.wait_for(lambda r: r.payload["status"] == "offline")
            assert will.payload["reason"] == "connection lost"
            assert will.payload["controller_id"] == online.payload["controller_id"]
        with controller_process("--mqtt", broker.url, "--mqtt-prefix", "ctl") as (proc, port):
            address = f"127.0.0.1:{port}"
            await live.wait_for(lambda r: r.payload["status"] == "online" and r.payload["address"] == address)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
            assert time.monotonic() - started < 5.0
            stopped = await live.wait_for(lambda r: r.payload.get("reason") == "stopped")
            assert stopped.payload["status"] == "offline"


@needs_mosquitto
@pytest.mark.e2e  # a real kvmtimer process
def test_controller_process_exports_its_mqtt_metrics(broker: Mosquitto) -> None:
    proc = subprocess.Popen(
        [
            *kvmtimer_command(),
            "controller",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--mqtt",
            broker.url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        port = wait_for_log_event(proc, "metrics_listening")["port"]
        assert isinstance(port, int)

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                text: str = response.read().decode()
            return text

        # The controller's `online` status went out: one message at least.
        until_sync(
            lambda: any(
                line.startswith("kvmtimer_controller_mqtt_messages_total ") and float(line.split()[1]) >= 1
                for line in scrape().splitlines()
            ),
            what="kvmtimer_controller_mqtt_messages_total >= 1",
        )
        assert 'kvmtimer_controller_mqtt_dropped_total{reason="queue_full"} 0.0' in scrape()
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.mark.e2e  # a real kvmtimer process
def test_controller_refuses_bad_mqtt_options() -> None:
    proc = subprocess.run(
        [
            *kvmtimer_command(),
            "controller",
            "--listen",
            "127.0.0.1:0",
            "--mqtt",
            "mqtt://h",
            "--mqtt-ca",
            "x",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "mqtts://" in proc.stderr


@needs_mosquitto
@pytest.mark.asyncio
async def test_final_status_published_during_the_reconnect_replay_wins(broker: Mosquitto) -> None:
    """stop() while the retained statuses are still being re-sent after a connect: the final
    status must reach the broker after the replay, not be lost or overtaken by it."""
    publisher = MqttPublisher(fast(broker.url), identifier="replay-test")
    for i in range(300):
        await publisher.publish(f"r/status/{i}", json.dumps({"status": "online", "i": i}).encode(), 1, True)
    async with subscriber(broker.port, "r/status/#") as live:
        publisher.start()
        await live.wait_for(lambda r: r.topic == "r/status/0")  # the replay has begun
        assert len(live.messages) < 300, "replay too fast to test the race"
        final = OutMessage("r/status/299", json.dumps({"status": "offline"}).encode(), 1, True)
        await publisher.stop([final])
    async with subscriber(broker.port, "r/status/299") as late:
        retained = await late.wait_for(lambda r: r.retain)
        assert retained.payload == {"status": "offline"}
    assert publisher.stats.dropped_total == 0


@needs_mosquitto
@pytest.mark.asyncio
async def test_broker_outage_cluster_keeps_migrating_and_publishing_resumes(broker: Mosquitto) -> None:
    async with sim_cluster(NODES) as sim:
        telemetry = start_controller_telemetry(sim.cluster, fast(broker.url))
        try:
            await sim.cluster.create_guest("g1", 1, WorkloadSpec(PERIOD), "ecv-vhe")
            async with subscriber(broker.port, "kvmtimer/#") as live:
                assert await telemetry.publisher.wait_connected(5)
                m = await migrate(sim, "g1", "noecv")
                await live.wait_for(
                    payload_has(f"kvmtimer/migrations/{m.migration_id}/events", phase="SUCCEEDED")
                )

            broker.stop()
            await until(lambda: not telemetry.publisher.connected)
            dropped_before = telemetry.dropped
            started = time.monotonic()
            for i in range(4):  # the cluster does not notice the outage
                sim.advance_s(0.1)
                await migrate(sim, "g1", "ecv-vhe" if i % 2 == 0 else "noecv")
                sim.cluster.telemetry.publish(batch("g1", 1, i, 3))
            assert time.monotonic() - started < 5.0
            await until(lambda: telemetry.stats()["samples"] == 12)
            stats = telemetry.publisher.stats
            # The next flush interval drops the buffered samples too.
            # 4 migrations' events (7 phases + 6 steps each) + samples
            await until(lambda: stats.dropped["disconnected"] >= 4 * 13 + 1)
            assert telemetry.dropped > dropped_before

            broker.start()  # same port, nothing retained
            assert await telemetry.publisher.wait_connected(10)
            assert stats.connects == 2
            async with subscriber(broker.port, "kvmtimer/#") as live:
                # Retained statuses are back although the new broker kept nothing.
                ctl = await live.wait_for(lambda r: r.topic == "kvmtimer/controller/status")
                assert ctl.retain and ctl.payload["status"] == "online"
                await live.wait_for(lambda r: r.topic == "kvmtimer/nodes/noecv/status" and r.retain)
                m = await migrate(
                    sim, "g1", "noecv" if sim.cluster.guest("g1").node_id == "ecv-vhe" else "ecv-vhe"
                )
                await live.wait_for(
                    payload_has(f"kvmtimer/migrations/{m.migration_id}/events", phase="SUCCEEDED")
                )
                sim.cluster.telemetry.publish(batch("g1", 1, 1000, 2))
                resumed = await live.wait_for(lambda r: r.topic == "kvmtimer/guests/g1/vcpus/0/samples")
                rows = sample_dicts(resumed.payload)
                assert [r["realtime_ns"] for r in rows] == [1000, 1001]
        finally:
            await telemetry.stop()


@pytest.mark.asyncio
async def test_no_broker_never_blocks_the_controller() -> None:
    settings = MqttSettings("127.0.0.1", free_port(), backoff_initial_s=0.05, backoff_max_s=0.2)
    async with sim_cluster(NODES) as sim:
        telemetry = start_controller_telemetry(sim.cluster, settings)
        try:
            await sim.cluster.create_guest("g1", 1, WorkloadSpec(PERIOD), "ecv-vhe")
            started = time.monotonic()
            await migrate(sim, "g1", "noecv")
            assert time.monotonic() - started < 3.0
            await until(lambda: telemetry.publisher.stats.dropped["disconnected"] >= 13)  # 7 phases + 6 steps
            assert not telemetry.publisher.connected and telemetry.publisher.stats.connects == 0
        finally:
            await telemetry.stop()


@pytest.mark.asyncio
async def test_embedded_broker_carries_controller_telemetry() -> None:
    async with embedded_broker() as eb, sim_cluster(NODES[:1]) as sim:
        assert eb.url.startswith("mqtt://127.0.0.1:")
        telemetry = start_controller_telemetry(sim.cluster, fast(eb.url, prefix="emb"))
        try:
            async with subscriber(eb.port, "emb/#") as live:
                status = await live.wait_for(lambda r: r.topic == "emb/controller/status")
                assert status.payload["status"] == "online"
                node = await live.wait_for(lambda r: r.topic == "emb/nodes/ecv-vhe/status")
                assert json.dumps(node.payload)  # valid JSON object
                assert node.payload["status"] == "online"
        finally:
            await telemetry.stop()
