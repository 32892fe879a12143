"""Bridge: the controller's telemetry hub -> a Publisher, in the MQTT topic tree (mqtt_schema.py).

The bridge reads its own Hub subscription, so a slow or absent broker never slows the
controller: the hub drops what the bridge cannot take (counted in `hub_dropped`), and the
publisher drops what the broker cannot take (counted by the publisher).

What it publishes:
- migration events at once (QoS 1);
- node statuses (retained) from node health events, and every `status_interval_s` for
  nodes whose status (health, load) changed, via the `nodes` callback;
- vCPU samples batched per vCPU, flushed every `flush_interval_s` (mqtt_schema.SampleBuffer),
  at most `max_messages_per_s` sample messages per second: a large cluster gets fewer,
  larger messages (each vCPU every `vCPUs / max_messages_per_s` seconds, oldest first)
  instead of drops. A message costs the publishing process ~0.3 ms of CPU (aiomqtt), twice
  that with the embedded broker in the same process, whatever it holds: per-message cost,
  not samples, is what a broker connection cannot keep up with (README "MQTT telemetry");
- the controller's retained status ("online" with telemetry counters, refreshed every
  `status_interval_s`; "offline" with reason "stopped" on stop()).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog
from kvmtimer.v1 import controller_pb2 as cpb

from controller.telemetry.hub import Hub, Subscription
from node.runtime import mqtt_schema
from node.runtime.mqtt import MqttPublisher, MqttSettings, client_id
from node.runtime.mqtt_schema import SampleBuffer, Topics
from node.runtime.publisher import OutMessage, Publisher

log = structlog.get_logger("kvmtimer.telemetry")

DEFAULT_FLUSH_INTERVAL_S = 0.1
# Sample messages per second, whatever the cluster's size: ~6 % of a core with the embedded
# broker (0.56 ms of CPU per message, publisher and broker together).
DEFAULT_MAX_MESSAGES_PER_S = 100.0
DEFAULT_STATUS_INTERVAL_S = 5.0
_TICK = object()  # no item before the next deadline

NodesSnapshot = Callable[[], Iterable[cpb.NodeStatus]]
StatsSource = Callable[[], dict[str, object]]


class MessageBudget:
    """A token bucket of messages: refills at `rate_per_s`, holds one second's worth (at least
    one message), starts full. Spending beyond it (a message that must go) is paid back first."""

    def __init__(self, rate_per_s: float) -> None:
        if rate_per_s <= 0:
            raise ValueError(f"a message budget must be positive, got {rate_per_s}")
        self.rate_per_s = rate_per_s
        self.capacity = max(1.0, rate_per_s)
        self._tokens = self.capacity
        self._at = -math.inf  # loop time of the last refill

    def available(self, now: float) -> int:
        """Whole messages that may go at loop time `now`."""
        if self._at > -math.inf:
            self._tokens = min(self.capacity, self._tokens + max(0.0, now - self._at) * self.rate_per_s)
        self._at = now
        return max(0, int(self._tokens))

    def spend(self, messages: int) -> None:
        self._tokens -= messages


class TelemetryBridge:
    """Publishes a Hub of ClusterTelemetry items through a Publisher."""

    def __init__(
        self,
        hub: Hub[cpb.ClusterTelemetry],
        publisher: Publisher,
        *,
        topics: Topics,
        controller_id: str,
        address: str = "",
        nodes: NodesSnapshot | None = None,
        stats: StatsSource | None = None,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        status_interval_s: float = DEFAULT_STATUS_INTERVAL_S,
        max_samples: int = mqtt_schema.DEFAULT_MAX_SAMPLES,
        max_messages_per_s: float = DEFAULT_MAX_MESSAGES_PER_S,
    ) -> None:
        self.hub = hub
        self.publisher = publisher
        self.topics = topics
        self.controller_id = controller_id
        self.address = address
        self.nodes = nodes
        self.extra_stats = stats
        self.flush_interval_s = flush_interval_s
        self.status_interval_s = status_interval_s
        self.samples = SampleBuffer(topics, max_samples)
        self.budget = MessageBudget(max_messages_per_s)
        self.items = 0  # telemetry items taken from the hub
        self.samples_in = 0  # vCPU samples among them
        self.messages_out = 0  # messages handed to the publisher
        self._node_keys: dict[str, bytes] = {}
        self._sub: Subscription[cpb.ClusterTelemetry] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def hub_dropped(self) -> int:
        """Items the hub dropped because this bridge fell behind."""
        return self._sub.dropped if self._sub is not None else 0

    def stats(self) -> dict[str, object]:
        out: dict[str, object] = {
            "items": self.items,
            "samples": self.samples_in,
            "messages": self.messages_out,
            "hub_dropped": self.hub_dropped,
            "samples_waiting": self.samples.pending,
        }
        if self.extra_stats is not None:
            out |= self.extra_stats()
        return out

    def start(self) -> None:
        """Subscribe now (nothing published from here on is missed) and start publishing."""
        if self._task is None:
            self._sub = self.hub.subscribe()
            self._task = asyncio.create_task(self._run(), name="telemetry-bridge")

    async def stop(self, timeout_s: float = 2.0) -> None:
        """Publish what is buffered and the controller's `offline` status. The publisher
        itself is left running (stop it afterwards to send everything)."""
        task, sub = self._task, self._sub
        if task is None or sub is None:
            return
        await Hub.finish(task, sub, timeout_s)
        await self._publish(self.samples.flush())
        await self._publish(
            [
                mqtt_schema.controller_status_message(
                    self.topics,
                    mqtt_schema.controller_status_payload(
                        mqtt_schema.OFFLINE,
                        controller_id=self.controller_id,
                        address=self.address,
                        reason="stopped",
                        realtime_ns=time.time_ns(),
                        stats=self.stats(),
                    ),
                )
            ]
        )

    async def _publish(self, messages: Iterable[OutMessage]) -> None:
        for m in messages:
            await self.publisher.publish(m.topic, m.payload, m.qos, m.retain)
            self.messages_out += 1

    async def publish_status(self) -> None:
        """The controller's `online` status, and every node whose status changed."""
        await self._publish(
            [
                mqtt_schema.controller_status_message(
                    self.topics,
                    mqtt_schema.controller_status_payload(
                        mqtt_schema.ONLINE,
                        controller_id=self.controller_id,
                        address=self.address,
                        realtime_ns=time.time_ns(),
                        stats=self.stats(),
                    ),
                )
            ]
        )
        if self.nodes is None:
            return
        now = time.time_ns()
        changed = []
        for node in self.nodes():
            key = mqtt_schema.status_key(node)
            if self._node_keys.get(node.node_id) != key:
                self._node_keys[node.node_id] = key
                changed.append(
                    mqtt_schema.node_status_message(self.topics, node, source="controller", realtime_ns=now)
                )
        await self._publish(changed)

    async def _handle(self, item: cpb.ClusterTelemetry) -> None:
        self.items += 1
        kind = item.WhichOneof("item")
        if kind == "samples":
            self.samples_in += len(item.samples.samples)
        elif kind == "node":
            self._node_keys[item.node.node.node_id] = mqtt_schema.status_key(item.node.node)
        messages = list(mqtt_schema.map_item(self.topics, item, self.samples))
        if kind == "samples":
            self.budget.spend(len(messages))  # vCPUs that filled a whole message count too
        await self._publish(messages)

    async def _flush_samples(self, now: float) -> None:
        messages = self.samples.flush(self.budget.available(now))
        self.budget.spend(len(messages))
        await self._publish(messages)

    async def _run(self) -> None:
        assert self._sub is not None
        queue = self._sub.queue
        loop = asyncio.get_running_loop()
        try:
            await self.publish_status()
        except Exception:
            log.exception("telemetry_status_error")
        next_status = loop.time() + self.status_interval_s
        next_flush = math.inf
        try:
            while True:
                timeout = max(0.0, min(next_status, next_flush) - loop.time())
                item: object
                try:
                    item = await asyncio.wait_for(queue.get(), timeout)
                except TimeoutError:
                    item = _TICK
                # Take whatever else is already waiting, in order, before looking at the clock.
                items = [item]
                while not queue.empty() and items[-1] is not None:
                    items.append(queue.get_nowait())
                try:
                    for it in items:
                        if it is None:
                            return
                        if isinstance(it, cpb.ClusterTelemetry):
                            await self._handle(it)
                    now = loop.time()
                    if self.samples.pending and next_flush == math.inf:
                        next_flush = now + self.flush_interval_s
                    if now >= next_flush:
                        await self._flush_samples(now)
                        # What the budget left waits for the next flush.
                        next_flush = now + self.flush_interval_s if self.samples.pending else math.inf
                    if now >= next_status:
                        next_status = now + self.status_interval_s
                        await self.publish_status()
                except Exception:
                    # One bad item must not end telemetry publishing.
                    log.exception("telemetry_bridge_error")
        finally:
            self.hub.unsubscribe(self._sub)


# --- the controller's MQTT telemetry ----------------------------------------------------


@dataclass(slots=True)
class MqttTelemetry:
    """The controller's MQTT telemetry: a bridge from the cluster's telemetry hub to a broker.

    Drop counters for metrics: `dropped` (total messages/items lost), or `stats()`.
    """

    publisher: MqttPublisher
    bridge: TelemetryBridge

    @property
    def dropped(self) -> int:
        """Messages the publisher dropped plus hub items the bridge never saw."""
        return self.publisher.stats.dropped_total + self.bridge.hub_dropped

    def stats(self) -> dict[str, object]:
        return self.bridge.stats()

    async def stop(self) -> None:
        """Flush, publish the controller's `offline` status, disconnect cleanly."""
        await self.bridge.stop()
        await self.publisher.stop()


def start_mqtt_telemetry(
    hub: Hub[cpb.ClusterTelemetry],
    settings: MqttSettings,
    *,
    nodes: NodesSnapshot | None = None,
    address: str = "",
    flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
    status_interval_s: float = DEFAULT_STATUS_INTERVAL_S,
) -> MqttTelemetry:
    """Start publishing `hub` (subscribed before this returns) to the broker; `nodes`: the
    current node statuses, re-published when they change.

    The broker may be down: the publisher keeps reconnecting and the cluster never waits.
    """
    topics = Topics(settings.prefix)
    identifier = client_id("controller")
    will = mqtt_schema.controller_status_message(
        topics,
        mqtt_schema.controller_status_payload(
            mqtt_schema.OFFLINE, controller_id=identifier, address=address, reason="connection lost"
        ),
    )
    publisher = MqttPublisher(settings, identifier=identifier, will=will)
    bridge = TelemetryBridge(
        hub,
        publisher,
        topics=topics,
        controller_id=identifier,
        address=address,
        nodes=nodes,
        stats=lambda: {"mqtt": publisher.stats.as_dict()},
        flush_interval_s=flush_interval_s,
        status_interval_s=status_interval_s,
    )
    publisher.start()
    bridge.start()
    return MqttTelemetry(publisher, bridge)
