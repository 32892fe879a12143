"""MQTT topic tree and payload schema (pure functions, no broker, no event loop).

Edge cases covered:
- broker URLs: default ports (1883 / 8883 for mqtts), percent-encoded user and password,
  IPv6 hosts, wrong scheme, a path or query, a bad port, no host;
- TLS options without mqtts://, a certificate without its key;
- topic prefixes with wildcards or empty levels; ids containing `/`, `+`, `#`;
- samples: batched per vCPU, in order, split at max_samples, a new message when the vCPU's
  node/VM changes (migration), u64 values beyond 2^53 kept exact; a flush limited by the
  bridge's message budget takes the oldest vCPUs first and keeps the others;
- migration payloads: enums as short names, an unknown counter error as null;
- node statuses: online only while healthy.
"""

from __future__ import annotations

import argparse
import json

import pytest
from kvmtimer.v1 import controller_pb2 as cpb
from kvmtimer.v1 import node_pb2 as pb

from node.runtime import mqtt_schema
from node.runtime.mqtt import MqttOptions, add_mqtt_arguments, mqtt_settings, parse_mqtt_url
from node.runtime.mqtt_schema import SampleBuffer, Topics
from node.runtime.publisher import OutMessage
from node.runtime.settings import typed

U64_MAX = 2**64 - 1


@pytest.mark.parametrize(
    ("url", "host", "port", "tls", "user", "password"),
    [
        ("mqtt://broker", "broker", 1883, False, None, None),
        ("mqtt://127.0.0.1:1999", "127.0.0.1", 1999, False, None, None),
        ("mqtts://broker.example", "broker.example", 8883, True, None, None),
        ("mqtt://alice:s%40cret%3A1@h:1884/", "h", 1884, False, "alice", "s@cret:1"),
        ("mqtt://bob@h", "h", 1883, False, "bob", None),
        ("mqtt://[::1]:1885", "::1", 1885, False, None, None),
    ],
)
def test_parse_mqtt_url(
    url: str, host: str, port: int, tls: bool, user: str | None, password: str | None
) -> None:
    s = parse_mqtt_url(url)
    assert (s.host, s.port, s.tls, s.username, s.password) == (host, port, tls, user, password)
    assert "cret" not in s.url  # the display URL never shows the password


@pytest.mark.parametrize(
    "url",
    ["tcp://h:1883", "h:1883", "mqtt://h:1883/topic", "mqtt://h:1883?x=1", "mqtt://h:99999", "mqtt://:1883"],
)
def test_parse_mqtt_url_rejects(url: str) -> None:
    with pytest.raises(ValueError):
        parse_mqtt_url(url)


def _args(*argv: str) -> MqttOptions:
    parser = argparse.ArgumentParser()
    add_mqtt_arguments(parser)
    return typed(MqttOptions, parser.parse_args(list(argv)))


def test_mqtt_settings_from_options() -> None:
    assert mqtt_settings(_args()) is None
    s = mqtt_settings(_args("--mqtt", "mqtts://h", "--mqtt-ca", "ca.pem", "--mqtt-prefix", "lab/kt/"))
    assert s is not None and s.tls and s.ca_file == "ca.pem" and s.prefix == "lab/kt"
    with pytest.raises(ValueError, match="mqtts://"):
        mqtt_settings(_args("--mqtt", "mqtt://h", "--mqtt-ca", "ca.pem"))
    with pytest.raises(ValueError, match="go together"):
        mqtt_settings(_args("--mqtt", "mqtts://h", "--mqtt-cert", "c.pem"))


@pytest.mark.parametrize("prefix", ["", "/", "a/+/b", "a/#", "a//b"])
def test_bad_prefixes(prefix: str) -> None:
    with pytest.raises(ValueError):
        mqtt_schema.check_prefix(prefix)


def test_topics_sanitise_ids() -> None:
    t = Topics("kvmtimer")
    assert t.node_status("node-1") == "kvmtimer/nodes/node-1/status"
    assert t.vcpu_samples("a/b+c#", 3) == "kvmtimer/guests/a_b_c_/vcpus/3/samples"
    assert t.migration_events("") == "kvmtimer/migrations/_/events"
    assert t.controller_status == "kvmtimer/controller/status"


def _sample(guest: str, vcpu: int, t: int, *, node: str = "n1", vm: str = "vm") -> pb.TelemetrySample:
    return pb.TelemetrySample(
        node_id=node,
        vm_id=vm,
        guest_id=guest,
        vcpu_index=vcpu,
        realtime_ns=t,
        host_counter=1000 + t,
        cntvct=t,
        cntpct=t,
        voffset=U64_MAX - 4,
        poffset=1000,
        trap_count=t,
        vtimer_ctl=1,
        vtimer_cval=U64_MAX,
        running=True,
    )


def _payloads(messages: list[OutMessage]) -> list[dict[str, object]]:
    return [json.loads(m.payload) for m in messages]


def test_samples_are_batched_per_vcpu_in_order() -> None:
    buf = SampleBuffer(Topics("p"))
    batch = pb.TelemetryBatch(samples=[_sample("g", v, t) for t in range(3) for v in range(2)])
    assert buf.add(batch) == []
    assert buf.pending == 6
    out = buf.flush()
    assert buf.pending == 0 and buf.flush() == []
    assert [m.topic for m in out] == ["p/guests/g/vcpus/0/samples", "p/guests/g/vcpus/1/samples"]
    assert all(m.qos == 0 and not m.retain for m in out)
    first = _payloads(out)[0]
    assert first["schema"] == 1
    assert (first["guest_id"], first["vcpu"], first["node_id"], first["vm_id"]) == ("g", 0, "n1", "vm")
    assert first["fields"] == [
        "realtime_ns", "host_counter", "cntvct", "cntpct", "voffset", "poffset", "uses_cntpoff",
        "traps_cntpct", "traps_ptimer", "trap_count", "vtimer_ctl", "vtimer_cval", "vtimer_level",
        "ptimer_ctl", "ptimer_cval", "ptimer_level", "running",
    ]  # fmt: skip
    assert first["samples"] == [
        [t, 1000 + t, t, t, U64_MAX - 4, 1000, False, False, False, t, 1, U64_MAX, False, 0, 0, False, True]
        for t in range(3)
    ]  # u64 values exact, flags as JSON booleans
    rows = mqtt_schema.sample_dicts(first)
    assert [r["realtime_ns"] for r in rows] == [0, 1, 2]
    assert (
        rows[0]["voffset"] == U64_MAX - 4 and rows[0]["vtimer_cval"] == U64_MAX and rows[0]["running"] is True
    )


def test_samples_split_at_max_and_on_migration() -> None:
    buf = SampleBuffer(Topics("p"), max_samples=4)
    full = buf.add(pb.TelemetryBatch(samples=[_sample("g", 0, t) for t in range(10)]))
    assert [len(p["samples"]) for p in _payloads(full)] == [4, 4]  # type: ignore[arg-type]
    assert buf.pending == 2
    # The guest moved: same topic, a separate message naming the new node and VM.
    buf.add(pb.TelemetryBatch(samples=[_sample("g", 0, 10, node="n2", vm="g@m-1")]))
    rest = _payloads(buf.flush())
    assert [(p["node_id"], p["vm_id"], len(p["samples"])) for p in rest] == [  # type: ignore[arg-type]
        ("n1", "vm", 2),
        ("n2", "g@m-1", 1),
    ]


def test_a_limited_flush_takes_the_oldest_vcpus_and_keeps_the_rest() -> None:
    buf = SampleBuffer(Topics("p"))
    buf.add(pb.TelemetryBatch(samples=[_sample("g", v, 0) for v in (3, 1, 2)]))
    first = buf.flush(limit=2)
    assert [m.topic for m in first] == ["p/guests/g/vcpus/3/samples", "p/guests/g/vcpus/1/samples"]
    assert (buf.pending, buf.vcpus) == (1, 1)
    assert buf.flush(limit=0) == []
    # vCPU 3 comes back after vCPU 2, whose first sample has waited longer; vCPU 2's message
    # holds both of its samples.
    buf.add(pb.TelemetryBatch(samples=[_sample("g", v, 1) for v in (3, 2)]))
    rest = _payloads(buf.flush(limit=5))
    assert [(p["vcpu"], len(p["samples"])) for p in rest] == [(2, 2), (3, 1)]  # type: ignore[arg-type]
    assert buf.pending == 0


def test_node_level_samples_use_the_vm_id() -> None:
    buf = SampleBuffer(Topics("p"))
    buf.add(pb.TelemetryBatch(samples=[_sample("", 0, 1, vm="vm-7")]))
    assert [m.topic for m in buf.flush()] == ["p/guests/vm-7/vcpus/0/samples"]


def test_migration_event_payload() -> None:
    m = cpb.Migration(
        migration_id="m-1",
        guest_id="g",
        source="a",
        destination="b",
        method=cpb.MIGRATION_METHOD_BY_VALUE,
        phase=cpb.MIGRATION_PHASE_RUNNING,
        downtime=1500,
        destination_voffset=U64_MAX,
    )
    msg = mqtt_schema.migration_event_message(
        Topics("p"), cpb.MigrationEvent(migration=m, step="pause", realtime_ns=7)
    )
    assert (msg.topic, msg.qos, msg.retain) == ("p/migrations/m-1/events", 1, False)
    p = json.loads(msg.payload)
    assert (p["schema"], p["migration_id"], p["guest_id"], p["phase"], p["step"], p["realtime_ns"]) == (
        1,
        "m-1",
        "g",
        "RUNNING",
        "pause",
        7,
    )
    rec = p["migration"]
    assert rec["method"] == "BY_VALUE" and rec["requested_method"] == "AUTO"
    assert rec["counter_error_ticks"] is None and rec["downtime"] == 1500
    assert rec["destination_voffset"] == U64_MAX
    m.counter_error_ticks = -37_500
    p = json.loads(mqtt_schema.migration_event_message(Topics("p"), cpb.MigrationEvent(migration=m)).payload)
    assert p["migration"]["counter_error_ticks"] == -37_500


@pytest.mark.parametrize("healthy", [True, False])
def test_node_status_payload(healthy: bool) -> None:
    node = cpb.NodeStatus(
        node_id="n1",
        address="127.0.0.1:5",
        healthy=healthy,
        cntfrq_hz=25_000_000,
        ecv=2,
        vhe=True,
        api_profile=pb.API_PROFILE_VCPU_OFFSETS,
        clock_mode=pb.CLOCK_MODE_REALTIME,
        has_cntpoff=True,
        guest_count=2,
        vcpu_count=5,
        last_error="" if healthy else "health check failed",
    )
    msg = mqtt_schema.node_status_message(Topics("p"), node, source="controller", realtime_ns=9)
    assert (msg.topic, msg.qos, msg.retain) == ("p/nodes/n1/status", 1, True)
    assert json.loads(msg.payload) == {
        "schema": 1,
        "node_id": "n1",
        "status": "online" if healthy else "offline",
        "source": "controller",
        "address": "127.0.0.1:5",
        "features": {
            "cntfrq_hz": 25_000_000,
            "ecv": 2,
            "vhe": True,
            "has_cntpoff": True,
            "api_profile": "VCPU_OFFSETS",
            "clock_mode": "REALTIME",
        },
        "health": {"healthy": healthy, "last_error": node.last_error},
        "load": {"vms": 2, "vcpus": 5},
        "realtime_ns": 9,
    }


def test_offline_payloads() -> None:
    will = mqtt_schema.node_offline_message(Topics("p"), "n1", source="node", reason="connection lost")
    assert will.retain and will.qos == 1
    assert json.loads(will.payload) == {
        "schema": 1,
        "node_id": "n1",
        "status": "offline",
        "source": "node",
        "reason": "connection lost",
    }
    ctl = mqtt_schema.controller_status_payload("offline", controller_id="c", reason="connection lost")
    assert ctl == {"schema": 1, "status": "offline", "controller_id": "c", "reason": "connection lost"}
