"""`kvmtimer up` telemetry as real processes: the embedded MQTT broker and --record.

Covers: with no --mqtt, `up` starts an embedded broker on 127.0.0.1 and prints its address;
a separate client subscribed there sees the controller's status, every node process's own
status (source "node") and migration events; the SUMMARY reports the broker; the
recording holds node statuses and migration events (and sample batches when the controller
collects them) and `kvmtimer report --from` draws it; the broker is gone when `up` exits.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from controller.cli import main
from tests.integration.test_report import png_size
from tests.support.mqtt import Subscriber, port_open, subscriber
from tests.support.nodes import kvmtimer_command

pytestmark = pytest.mark.e2e

BANNER = re.compile(r"MQTT telemetry: mqtt://127\.0\.0\.1:(\d+) \(embedded broker\), topics kvmtimer/#")


async def watch_broker(port: int) -> Subscriber:
    async with subscriber(port, "kvmtimer/#") as live:
        await live.wait_for(
            lambda r: r.topic == "kvmtimer/controller/status" and r.payload["status"] == "online"
        )
        for n in (1, 2, 3):
            await live.wait_for(
                lambda r, n=n: (
                    r.topic == f"kvmtimer/nodes/node-{n}/status"  # type: ignore[misc]
                    and r.payload.get("source") == "node"
                    and r.payload["status"] == "online"
                ),
                timeout_s=20,
            )
        await live.wait_for(
            lambda r: r.topic.startswith("kvmtimer/migrations/") and r.payload["phase"] == "SUCCEEDED",
            timeout_s=30,
        )
        return live


def test_up_embedded_broker_and_recording(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record = tmp_path / "telemetry.jsonl"
    argv = ["up", "--duration", "8", "--nodes", "3", "--guests", "3", "--interval", "0.3", "--seed", "7"]
    proc = subprocess.Popen(
        [*kvmtimer_command(), *argv, "--record", str(record)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        assert proc.stdout is not None
        port = None
        head = []
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            head.append(line)
            if match := BANNER.search(line):
                port = int(match.group(1))
        assert port is not None, "".join(head)
        live = asyncio.run(watch_broker(port))
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    (summary_line,) = [line for line in out.splitlines() if line.startswith("SUMMARY ")]
    summary = json.loads(summary_line.removeprefix("SUMMARY "))
    telemetry = summary["telemetry"]
    assert telemetry["mqtt"]["embedded"] is True and telemetry["mqtt"]["url"] == f"mqtt://127.0.0.1:{port}"
    assert telemetry["mqtt"]["published"] > 0
    assert telemetry["record"]["file"] == str(record) and telemetry["record"]["items"] > 0
    assert not port_open(port), "the embedded broker outlived `kvmtimer up`"
    events = [m for m in live.messages if m.topic.startswith("kvmtimer/migrations/")]
    assert events and all(e.qos == 1 and e.payload["schema"] == 1 for e in events)

    items = [json.loads(line) for line in record.read_text().splitlines()]
    kinds = {next(iter(i)) for i in items}
    assert {"node", "migration"} <= kinds
    assert sum(1 for i in items if "node" in i) >= 3  # the statuses at the start
    png = tmp_path / "report.png"
    assert (
        main(["report", "--from", str(record), "--out", str(png), "--width", "800", "--height", "500"]) == 0
    )
    assert png_size(png) == (800, 500)
    assert "kvmtimer report:" in capsys.readouterr().out
