"""A node process's own MQTT status: `<prefix>/nodes/<node>/status`, retained.

`online` (with features and load) while the process runs, republished when its load
changes; `offline` (reason "stopped") on a clean stop; and the same topic as the MQTT
last will (reason "connection lost"), so a killed node shows offline. The publisher
reconnects on its own; the node never waits for the broker.
"""

from __future__ import annotations

import asyncio
import time

from kvmtimer.v1 import controller_pb2 as cpb

from node.core.host import Host
from node.runtime import mqtt_schema
from node.runtime.aio import cancel_and_wait
from node.runtime.mqtt import MqttPublisher, MqttSettings, client_id
from node.service.convert import host_info

DEFAULT_REFRESH_S = 5.0


class NodeStatusPublisher:
    def __init__(
        self, host: Host, address: str, settings: MqttSettings, *, refresh_s: float = DEFAULT_REFRESH_S
    ) -> None:
        self.host = host
        self.address = address
        self.refresh_s = refresh_s
        self.topics = mqtt_schema.Topics(settings.prefix)
        will = mqtt_schema.node_offline_message(
            self.topics, host.node_id, source="node", reason="connection lost"
        )
        self.publisher = MqttPublisher(settings, identifier=client_id("node", host.node_id), will=will)
        self._task: asyncio.Task[None] | None = None
        self._last: bytes | None = None

    def _status(self) -> cpb.NodeStatus:
        return mqtt_schema.node_status_from_host_info(host_info(self.host), self.address)

    async def publish_status(self) -> None:
        """Publish `online` if anything but the time changed since the last one."""
        status = self._status()
        key = mqtt_schema.status_key(status)
        if key == self._last:
            return
        self._last = key
        m = mqtt_schema.node_status_message(self.topics, status, source="node", realtime_ns=time.time_ns())
        await self.publisher.publish(m.topic, m.payload, m.qos, m.retain)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            await self.publish_status()

    async def start(self) -> None:
        self.publisher.start()
        await self.publish_status()  # retained: sent as soon as the broker is reachable
        self._task = asyncio.create_task(self._refresh_loop(), name="node-mqtt-status")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        await self.publisher.stop(
            [
                mqtt_schema.node_offline_message(
                    self.topics, self.host.node_id, source="node", reason="stopped"
                )
            ]
        )


async def start_node_status(
    host: Host, address: str, settings: MqttSettings | None
) -> NodeStatusPublisher | None:
    """Start publishing the node's status (None without --mqtt). Never waits for the broker.

    `address`: HOST:PORT clients dial (node.runtime.addr.advertise_address)."""
    if settings is None:
        return None
    status = NodeStatusPublisher(host, address, settings)
    await status.start()
    return status
