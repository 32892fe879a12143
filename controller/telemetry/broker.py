"""An embedded MQTT broker (amqtt, in-process) so `kvmtimer up` has MQTT telemetry with
nothing installed. Loopback only, anonymous, MQTT 3.1.1, retained messages in memory.
Real deployments and the tests use a real broker (Debian's mosquitto) instead.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

# amqtt ships without type information.
from amqtt.broker import Broker  # type: ignore[import-untyped]

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class EmbeddedBroker:
    host: str  # where it listens (127.0.0.1)
    port: int  # the free port it got

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


def _quiet_amqtt() -> None:
    # amqtt logs every connection at INFO and some client hiccups at WARNING; a demo's
    # terminal belongs to its live view. Errors still get through.
    for name in ("amqtt", "transitions"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.ERROR)


def _bound_port(broker: object) -> int:
    """The port asyncio picked for the listener bound to port 0."""
    servers = getattr(broker, "_servers", {})
    server = servers.get("default") if isinstance(servers, dict) else None
    sockets = getattr(getattr(server, "instance", None), "sockets", None) or ()
    for sock in sockets:
        port = sock.getsockname()[1]
        if isinstance(port, int) and port:
            return port
    raise RuntimeError("embedded MQTT broker: cannot find its listening port (amqtt version?)")


@contextlib.asynccontextmanager
async def embedded_broker(host: str = LOOPBACK) -> AsyncIterator[EmbeddedBroker]:
    """Run an amqtt broker on `host`, on a free port, for the duration of the block."""
    _quiet_amqtt()
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:0"}},
            # Only anonymous access: no $SYS publisher, no packet/event logging plugins.
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
    )
    try:
        await broker.start()
    except Exception as err:  # amqtt's BrokerError and what it wraps (e.g. no free port)
        raise RuntimeError(f"embedded MQTT broker did not start: {err}") from err
    try:
        yield EmbeddedBroker(host, _bound_port(broker))
    finally:
        await broker.shutdown()
