"""Telemetry of a local `kvmtimer up` cluster: MQTT (an embedded broker unless --mqtt names
one, or none with --no-mqtt) and the --record JSONL file."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TextIO

from kvmtimer.v1 import controller_pb2 as cpb

from controller.service.cluster import Cluster
from controller.service.telemetry import node_statuses, start_controller_telemetry
from controller.telemetry.bridge import MqttTelemetry
from controller.telemetry.broker import EmbeddedBroker, embedded_broker
from controller.telemetry.record import TelemetryRecorder
from node.runtime.mqtt import MqttOptions, MqttSettings, mqtt_settings


@dataclass(slots=True)
class LocalTelemetry:
    settings: MqttSettings | None  # where MQTT goes (None: --no-mqtt)
    broker: EmbeddedBroker | None  # the embedded broker, when no --mqtt was given
    options: MqttOptions  # --mqtt* as given
    mqtt: MqttTelemetry | None = None
    recorder: TelemetryRecorder | None = None
    record_path: str = ""
    _stopped: bool = field(default=False)

    def node_args(self) -> list[str]:
        """Options for `kvmtimer node` so the node processes publish their own status."""
        if self.settings is None:
            return []
        out = ["--mqtt", self.options.mqtt or (self.broker.url if self.broker else ""), "--mqtt-prefix"]
        out.append(self.settings.prefix)
        for flag, value in (
            ("--mqtt-ca", self.settings.ca_file),
            ("--mqtt-cert", self.settings.cert_file),
            ("--mqtt-key", self.settings.key_file),
        ):
            if value:
                out += [flag, value]
        if self.settings.tls_insecure:
            out.append("--mqtt-tls-insecure")
        return out

    def banner(self) -> str:
        if self.settings is None:
            return "  MQTT telemetry: off (--no-mqtt)"
        where = "embedded broker" if self.broker is not None else "broker"
        prefix = self.settings.prefix
        return (
            f"  MQTT telemetry: {self.settings.url} ({where}), topics {prefix}/#\n"
            f"    e.g. mosquitto_sub -h {self.settings.host} -p {self.settings.port} -t '{prefix}/#' -v"
        )

    def start_mqtt(self, cluster: Cluster, address: str) -> None:
        """Publish the cluster's telemetry (controller status first; never waits for the broker)."""
        if self.settings is not None and self.mqtt is None:
            self.mqtt = start_controller_telemetry(cluster, self.settings, address=address)

    def start_recording(self, cluster: Cluster, out: TextIO | None, path: str = "") -> None:
        """Record every telemetry item from now on, after the current node statuses."""
        if out is None or self.recorder is not None:
            return
        initial = [cpb.ClusterTelemetry(node=cpb.NodeHealthEvent(node=n)) for n in node_statuses(cluster)]
        self.recorder = TelemetryRecorder(cluster.telemetry, out, initial=initial)
        self.recorder.start()
        self.record_path = path

    async def nodes_changed(self) -> None:
        """Publish node statuses now (e.g. right after registering them)."""
        if self.mqtt is not None:
            await self.mqtt.bridge.publish_status()

    async def stop(self) -> None:
        """Finish the recording and MQTT publishing (after Cluster.stop(): the hub has closed)."""
        if self._stopped:
            return
        self._stopped = True
        if self.recorder is not None:
            await self.recorder.stop()
        if self.mqtt is not None:
            await self.mqtt.stop()

    def summary(self) -> dict[str, object]:
        mqtt: dict[str, object] | None = None
        if self.settings is not None:
            mqtt = {
                "url": self.settings.url,
                "embedded": self.broker is not None,
                "prefix": self.settings.prefix,
            }
            if self.mqtt is not None:
                stats = self.mqtt.publisher.stats
                bridge = self.mqtt.bridge
                mqtt |= {
                    "published": stats.published,
                    "dropped": self.mqtt.dropped,  # messages the publisher dropped + hub items missed
                    "dropped_by_reason": dict(stats.dropped) | {"hub_items": bridge.hub_dropped},
                    "samples": bridge.samples_in,
                    "sample_messages_per_s_max": bridge.budget.rate_per_s,
                    "connects": stats.connects,
                }
        record = None
        if self.recorder is not None:
            record = {
                "file": self.record_path,
                "items": self.recorder.written,
                "dropped": self.recorder.hub_dropped,
            }
        return {"mqtt": mqtt, "record": record}


def add_local_telemetry_arguments(parser: argparse.ArgumentParser) -> None:
    from node.runtime.mqtt import add_mqtt_arguments

    add_mqtt_arguments(parser, what="telemetry (default: an embedded broker on 127.0.0.1)")
    parser.add_argument("--no-mqtt", action="store_true", help="no MQTT telemetry at all")


@contextlib.asynccontextmanager
async def local_telemetry(options: MqttOptions, *, off: bool = False) -> AsyncIterator[LocalTelemetry]:
    """Settings from the options (ValueError when invalid); the embedded broker runs for the
    duration of the block when no --mqtt was given; `off` (--no-mqtt): no MQTT at all."""
    if off:
        yield LocalTelemetry(None, None, options)
        return
    if options.mqtt:
        settings = mqtt_settings(options)
        assert settings is not None
        telemetry = LocalTelemetry(settings, None, options)
        try:
            yield telemetry
        finally:
            await telemetry.stop()
        return
    async with embedded_broker() as broker:
        settings = mqtt_settings(options, url=broker.url)
        assert settings is not None
        telemetry = LocalTelemetry(settings, broker, options)
        try:
            yield telemetry
        finally:
            await telemetry.stop()  # before the broker goes away
