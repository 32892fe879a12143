"""The Publisher protocol: where telemetry messages go (an MQTT broker, a test's list).

Adapters depend on this protocol only; `node.runtime.mqtt.MqttPublisher` is the
aiomqtt implementation, tests inject a fake that records what it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class OutMessage:
    """One message to publish."""

    topic: str  # full topic, prefix included
    payload: bytes  # UTF-8 JSON
    qos: int = 0  # MQTT QoS 0 or 1
    retain: bool = False  # broker keeps it as the topic's last value


class Publisher(Protocol):
    """Sends messages somewhere. Implementations never block for long and never raise
    for delivery problems: what cannot be sent is dropped and counted by the implementation."""

    async def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None: ...


async def publish_all(publisher: Publisher, messages: list[OutMessage]) -> None:
    """Hand `messages` to `publisher` in order."""
    for m in messages:
        await publisher.publish(m.topic, m.payload, m.qos, m.retain)
