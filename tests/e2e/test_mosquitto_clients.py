"""mosquitto_sub (Debian mosquitto-clients), an MQTT client this project did not write, reading what
real node and controller processes publish to a real mosquitto broker.

Covers: a late subscriber gets the retained status topics (controller and both nodes, `online`,
retain flag set, schema 1, the node's features); a subscriber sees a migration's events in order,
ending with the SUCCEEDED phase, with the migration record under its .proto field names.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from kvmtimer.v1 import controller_pb2 as cpb
from kvmtimer.v1 import controller_pb2_grpc

from tests.support.mqtt import NO_MOSQUITTO, mosquitto, mosquitto_binary
from tests.support.nodes import kvmtimer_process, wait_for_log_event
from tests.support.outside import require_tool

pytestmark = pytest.mark.e2e

# retain flag, topic and payload, tab-separated, one message per line
FORMAT = "%r\t%t\t%p"


def parse(line: str) -> tuple[bool, str, Any]:
    retained, topic, payload = line.rstrip("\n").split("\t", 2)
    return retained == "1", topic, json.loads(payload)


def read_until(
    proc: subprocess.Popen[str], done: Any, timeout_s: float = 30.0
) -> list[tuple[bool, str, Any]]:
    """Messages mosquitto_sub prints until `done(messages)` holds."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    messages: list[tuple[bool, str, Any]] = []
    while not done(messages):
        assert time.monotonic() < deadline, f"mosquitto_sub printed {messages}"
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"mosquitto_sub exited {proc.poll()}: {messages}")
        messages.append(parse(line))
    return messages


def test_mosquitto_sub_reads_status_and_migration_events(tmp_path: Path) -> None:
    sub = require_tool("mosquitto_sub")
    if mosquitto_binary() is None:
        pytest.skip(NO_MOSQUITTO)
    with mosquitto(tmp_path) as broker:
        mqtt = ["--mqtt", broker.url, "--mqtt-prefix", "kvt/e2e"]
        base = ["--listen", "127.0.0.1:0", *mqtt]
        with (
            kvmtimer_process("node", [*base, "--node-id", "n1", "--ecv", "2", "--vhe"]) as p1,
            kvmtimer_process("node", [*base, "--node-id", "n2", "--api-profile", "VCPU_OFFSETS"]) as p2,
        ):
            nodes = [
                f"--node=n{i}=127.0.0.1:{wait_for_log_event(p, 'node_listening')['port']}"
                for i, p in ((1, p1), (2, p2))
            ]
            args = ["--listen", "127.0.0.1:0", "--health-interval", "0", *nodes, *mqtt]
            with kvmtimer_process("controller", args) as ctl:
                port = wait_for_log_event(ctl, "controller_listening")["port"]

                # A late subscriber: the three retained statuses, online (waiting until the
                # processes have published them).
                def statuses_online(messages: list[tuple[bool, str, Any]]) -> bool:
                    latest = {topic: payload for _, topic, payload in messages}
                    return len(latest) == 3 and all(p["status"] == "online" for p in latest.values())

                at_broker = [sub, "-h", "127.0.0.1", "-p", str(broker.port), "-F", FORMAT]
                retained_only = ["--retained-only", "-C", "3", "-W", "3"]
                deadline = time.monotonic() + 30
                while True:
                    late = subprocess.run(
                        [
                            *at_broker,
                            "-t",
                            "kvt/e2e/+/status",
                            "-t",
                            "kvt/e2e/nodes/+/status",
                            *retained_only,
                        ],
                        capture_output=True,
                        text=True,
                        timeout=30,
                    )
                    retained = [parse(line) for line in late.stdout.splitlines() if line]
                    if statuses_online(retained):
                        break
                    assert time.monotonic() < deadline, (late.returncode, late.stdout, late.stderr)
                assert all(flag for flag, _, _ in retained)
                by_topic = {topic: payload for _, topic, payload in retained}
                assert set(by_topic) == {
                    "kvt/e2e/controller/status",
                    "kvt/e2e/nodes/n1/status",
                    "kvt/e2e/nodes/n2/status",
                }
                assert all(p["schema"] == 1 for p in by_topic.values())
                n1 = by_topic["kvt/e2e/nodes/n1/status"]
                assert n1["node_id"] == "n1" and n1["features"]["ecv"] == 2 and n1["features"]["has_cntpoff"]

                # A live subscriber: the controller status (retained) first proves the
                # subscription is in place, then a migration's events.
                watcher = subprocess.Popen(
                    [
                        *at_broker,
                        "-q",
                        "1",
                        "-t",
                        "kvt/e2e/controller/status",
                        "-t",
                        "kvt/e2e/migrations/+/events",
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
                try:
                    read_until(watcher, lambda m: any(t == "kvt/e2e/controller/status" for _, t, _ in m))
                    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                        stub = controller_pb2_grpc.ControllerStub(channel)
                        stub.CreateGuest(cpb.CreateGuestRequest(guest_id="g", node_id="n1"), timeout=30)
                        moved = stub.Migrate(
                            cpb.MigrateRequest(guest_id="g", destination="n2", migration_id="m-1", wait=True),
                            timeout=60,
                        )
                    assert moved.phase == cpb.MIGRATION_PHASE_SUCCEEDED, moved.reason

                    def succeeded(messages: list[tuple[bool, str, Any]]) -> bool:
                        return any(
                            p.get("phase") == "SUCCEEDED" for _, t, p in messages if "/migrations/" in t
                        )

                    events = [
                        (flag, payload)
                        for flag, topic, payload in read_until(watcher, succeeded)
                        if topic == "kvt/e2e/migrations/m-1/events"
                    ]
                finally:
                    watcher.terminate()
                    watcher.wait(timeout=10)
                    assert watcher.stdout is not None
                    watcher.stdout.close()
    assert not any(flag for flag, _ in events)  # events are not retained
    phases = [p["phase"] for _, p in events if not p["step"]]
    assert phases[-1] == "SUCCEEDED" and "RUNNING" in phases, phases
    steps = [p["step"] for _, p in events if p["step"]]
    assert steps[:1] == ["prepare"] and "cleanup" in steps, steps
    last = events[-1][1]
    assert last["guest_id"] == "g" and last["migration"]["destination"] == "n2" and last["schema"] == 1
