"""MQTT publishing through aiomqtt: a Publisher that survives broker outages.

`MqttPublisher` keeps one connection to the broker in a background task. `publish()`
never waits for the network: a message goes into a bounded queue that a sender task
drains. While there is no connection, messages are dropped and counted (`stats`), except
retained ones: the last retained payload of every topic is remembered and published again
after each (re)connect, so a broker restarted without persistence gets the current
statuses back. Reconnects back off exponentially (with jitter) up to `backoff_max_s`.

The last will (e.g. a retained `offline` status) is registered with every connection, so
a killed process or a dropped connection shows up as offline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import structlog

from node.runtime import secret_files
from node.runtime.backoff import Backoff
from node.runtime.mqtt_schema import DEFAULT_PREFIX, check_prefix
from node.runtime.publisher import OutMessage

# aiomqtt (with paho and dnspython) costs a quarter of a second at start-up: imported by the
# publisher's methods, so a process without --mqtt never loads it.
if TYPE_CHECKING:
    import aiomqtt

log = structlog.get_logger("kvmtimer.mqtt")

DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
# paho/aiomqtt log through the standard library; keep them quiet unless something is wrong.
_PAHO_LOGGER = logging.getLogger("kvmtimer.mqtt.paho")
_PAHO_LOGGER.setLevel(logging.ERROR)


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """Where and how to connect; from `--mqtt URL` and friends."""

    host: str  # broker host name or address
    port: int = DEFAULT_PORT  # broker port
    username: str | None = None  # from the URL's user part
    password: str | None = None  # from the URL's password part
    tls: bool = False  # mqtts://
    ca_file: str | None = None  # --mqtt-ca: CA bundle to verify the broker (default: system CAs)
    cert_file: str | None = None  # --mqtt-cert: client certificate (mutual TLS)
    key_file: str | None = None  # --mqtt-key: its private key
    tls_insecure: bool = False  # --mqtt-tls-insecure: do not check the broker's host name
    prefix: str = DEFAULT_PREFIX  # --mqtt-prefix: topic tree root
    keepalive_s: int = 10  # MQTT keep-alive: how fast a silent dead broker is noticed
    timeout_s: float = 5.0  # connect (CONNACK), QoS 1 acknowledgement and disconnect timeout
    backoff_initial_s: float = 0.2  # first reconnect delay
    backoff_max_s: float = 5.0  # reconnect delay bound
    queue_size: int = 10_000  # outgoing messages buffered while connected

    @property
    def url(self) -> str:
        """The broker URL without the password (for logs and banners)."""
        user = f"{self.username}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{host}:{self.port}"


def parse_mqtt_url(url: str) -> MqttSettings:
    """`mqtt://[user[:password]@]HOST[:PORT]` or `mqtts://...` (TLS, default port 8883)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"expected mqtt://HOST:PORT or mqtts://HOST:PORT, got {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"an MQTT broker URL has no path or query: {url!r} (use --mqtt-prefix for topics)")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"invalid port in {url!r}") from None
    if not parts.hostname:
        raise ValueError(f"no broker host in {url!r}")
    tls = parts.scheme == "mqtts"
    return MqttSettings(
        host=parts.hostname,
        port=port if port is not None else (DEFAULT_TLS_PORT if tls else DEFAULT_PORT),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=tls,
    )


def add_mqtt_arguments(parser: argparse.ArgumentParser, *, what: str = "telemetry and status") -> None:
    """--mqtt, --mqtt-prefix and the TLS options (shared by node, controller and up)."""
    parser.add_argument(
        "--mqtt",
        metavar="URL",
        default=None,
        help=f"publish {what} to this MQTT broker: mqtt://[USER:PASS@]HOST:PORT, or mqtts:// for TLS",
    )
    secret_files.add_file_option(parser, "mqtt", "the broker URL (it may hold a password)")
    parser.add_argument(
        "--mqtt-prefix",
        default=DEFAULT_PREFIX,
        metavar="PREFIX",
        help=f"MQTT topic prefix (default {DEFAULT_PREFIX})",
    )
    parser.add_argument("--mqtt-ca", metavar="FILE", default=None, help="CA bundle for mqtts:// brokers")
    parser.add_argument("--mqtt-cert", metavar="FILE", default=None, help="client certificate (mqtts://)")
    parser.add_argument("--mqtt-key", metavar="FILE", default=None, help="client certificate key (mqtts://)")
    parser.add_argument(
        "--mqtt-tls-insecure",
        action="store_true",
        help="do not verify the broker's host name (mqtts://, testing only)",
    )


@dataclass(frozen=True, slots=True)
class MqttOptions:
    """The options of `add_mqtt_arguments`."""

    mqtt: str | None  # --mqtt: broker URL (None: no MQTT)
    mqtt_prefix: str  # --mqtt-prefix: topic tree root
    mqtt_ca: str | None  # --mqtt-ca
    mqtt_cert: str | None  # --mqtt-cert
    mqtt_key: str | None  # --mqtt-key
    mqtt_tls_insecure: bool  # --mqtt-tls-insecure


def mqtt_settings(options: MqttOptions, url: str | None = None) -> MqttSettings | None:
    """MqttSettings from the options (None without --mqtt or `url`); ValueError when invalid."""
    o = options
    url = url if url is not None else o.mqtt
    if not url:
        return None
    settings = parse_mqtt_url(url)
    if any((o.mqtt_ca, o.mqtt_cert, o.mqtt_key)) and not settings.tls:
        raise ValueError("--mqtt-ca/--mqtt-cert/--mqtt-key need an mqtts:// broker URL")
    if bool(o.mqtt_cert) != bool(o.mqtt_key):
        raise ValueError("--mqtt-cert and --mqtt-key go together")
    return replace(
        settings,
        prefix=check_prefix(o.mqtt_prefix),
        ca_file=o.mqtt_ca,
        cert_file=o.mqtt_cert,
        key_file=o.mqtt_key,
        tls_insecure=o.mqtt_tls_insecure,
    )


def client_id(role: str, name: str = "") -> str:
    """Unique per process and start, so a restarted process never takes over an old session."""
    parts = ["kvmtimer", role, name, str(os.getpid()), secrets.token_hex(3)]
    return "-".join(p for p in parts if p)


@dataclass(slots=True)
class PublishStats:
    """Counters of one MqttPublisher (live object; read them at any time)."""

    published: int = 0  # messages handed to the broker connection
    dropped: Counter[str] = field(default_factory=Counter)  # messages dropped, by reason
    connects: int = 0  # successful connections (1 + reconnects)
    connected: bool = False  # a connection is up now

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def as_dict(self) -> dict[str, object]:
        return {
            "published": self.published,
            "dropped": self.dropped_total,
            "dropped_by_reason": dict(self.dropped),
            "connects": self.connects,
            "connected": self.connected,
        }


# Drop reasons.
DROP_DISCONNECTED = "disconnected"  # no broker connection when published
DROP_QUEUE_FULL = "queue_full"  # the outgoing queue was full (broker slower than the producer)
DROP_SEND_FAILED = "send_failed"  # the connection broke while sending, or no QoS 1 ack in time
DROP_STOPPED = "stopped"  # still queued when the publisher stopped


class MqttPublisher:
    """Publisher (node.runtime.publisher) over one reconnecting aiomqtt connection."""

    def __init__(self, settings: MqttSettings, *, identifier: str, will: OutMessage | None = None) -> None:
        self.settings = settings
        self.identifier = identifier
        self.will = will
        self.stats = PublishStats()
        self._queue: asyncio.Queue[OutMessage] = asyncio.Queue(settings.queue_size)
        self._retained: dict[str, OutMessage] = {}  # last retained message per topic
        self._connected = asyncio.Event()  # publish() queues (else drops)
        self._ready = asyncio.Event()  # connected and the retained statuses re-sent
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._log = log.bind(broker=settings.url, client_id=identifier)

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start connecting in the background (returns at once; the broker may be down)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"mqtt-{self.identifier}")

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def queued(self) -> int:
        """Messages waiting for the connection (at most settings.queue_size)."""
        return self._queue.qsize()

    async def wait_connected(self, timeout_s: float) -> bool:
        """True once connected and the retained statuses are re-sent; False after `timeout_s`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout_s)
        return self._ready.is_set()

    async def stop(self, final: list[OutMessage] | None = None) -> None:
        """Publish `final` (e.g. a retained `offline`), send what is queued, disconnect cleanly
        (so the broker does not publish the will). Bounded: a connection that is up (or comes
        up meanwhile) gets `timeout_s` to send; a broker that is down is not waited for."""
        for m in final or []:
            await self.publish(m.topic, m.payload, m.qos, m.retain)
        if self._task is None:
            return
        self._stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 2 * self.settings.timeout_s + 1.0)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._drop_queued(DROP_STOPPED)

    # --- Publisher -------------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        message = OutMessage(topic, payload, qos, retain)
        if retain:
            self._retained[topic] = message
        if not self.connected:
            # Retained messages are re-sent from _retained on the next connect.
            if not retain:
                self.stats.dropped[DROP_DISCONNECTED] += 1
            return
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            self.stats.dropped[DROP_QUEUE_FULL] += 1

    # --- the connection ----------------------------------------------------------------

    def _client(self) -> aiomqtt.Client:
        import aiomqtt

        s = self.settings
        will = None
        if self.will is not None:
            w = self.will
            will = aiomqtt.Will(w.topic, w.payload, w.qos, w.retain)
        tls_params = None
        if s.tls:
            tls_params = aiomqtt.TLSParameters(ca_certs=s.ca_file, certfile=s.cert_file, keyfile=s.key_file)
        return aiomqtt.Client(
            s.host,
            s.port,
            username=s.username,
            password=s.password,
            identifier=self.identifier,
            will=will,
            keepalive=s.keepalive_s,
            timeout=s.timeout_s,
            tls_params=tls_params,
            tls_insecure=s.tls_insecure if s.tls else None,
            logger=_PAHO_LOGGER,
        )

    async def _run(self) -> None:
        import aiomqtt

        backoff = Backoff(self.settings.backoff_initial_s, self.settings.backoff_max_s, jitter=0.2)
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                async with self._client() as client:
                    await self._connected_session(client)
            except aiomqtt.MqttError as err:
                self._log.warning(
                    "mqtt_disconnected" if self.stats.connected else "mqtt_connect_failed",
                    error=str(err) or type(err).__name__,
                    retry_in_s=round(backoff.current_s, 3),
                )
            except Exception:
                # A bug or an unexpected library error must not end publishing for good.
                self._log.exception("mqtt_connection_error", retry_in_s=round(backoff.current_s, 3))
            finally:
                self._connected.clear()
                self._ready.clear()
                self.stats.connected = False
                self._drop_queued(DROP_DISCONNECTED)
            if self._stop.is_set():
                break
            if time.monotonic() - started > 2 * self.settings.backoff_max_s:
                backoff.reset()  # it was up for a while: start over
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), backoff.next_s())
        self._log.info("mqtt_stopped", **self.stats.as_dict())

    async def _connected_session(self, client: aiomqtt.Client) -> None:
        """One connection's life: re-send the retained statuses, then the queue, until the
        connection breaks (MqttError) or stop() is called (clean disconnect on return)."""
        import aiomqtt

        self.stats.connects += 1
        self._log.info("mqtt_connected", connects=self.stats.connects)
        # Connected from here on: what is published during the replay queues up behind it,
        # so a status changed meanwhile (e.g. the final `offline`) is sent last and wins.
        replay = list(self._retained.values())
        self.stats.connected = True
        self._connected.set()
        replayed = self._ready
        sender = asyncio.create_task(
            self._send_loop(client, replay, replayed), name=f"mqtt-send-{self.identifier}"
        )
        watcher = asyncio.create_task(self._wait_disconnected(client), name=f"mqtt-watch-{self.identifier}")
        stopper = asyncio.create_task(self._stop.wait(), name=f"mqtt-stop-{self.identifier}")
        try:
            done, _ = await asyncio.wait({sender, watcher, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if stopper in done and not (sender.done() or watcher.done()):
                # A clean stop: send the replay and the queue (the final statuses) first.
                drained = asyncio.create_task(self._drained(replayed))
                await asyncio.wait(
                    {drained, sender, watcher},
                    timeout=self.settings.timeout_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                drained.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await drained
        finally:
            for task in (sender, watcher, stopper):
                task.cancel()
            results = await asyncio.gather(sender, watcher, stopper, return_exceptions=True)
        self._connected.clear()
        self._ready.clear()
        for result in results:
            if isinstance(result, aiomqtt.MqttError):
                raise result

    async def _drained(self, replayed: asyncio.Event) -> None:
        await replayed.wait()
        await self._queue.join()

    async def _send_loop(
        self, client: aiomqtt.Client, replay: list[OutMessage], replayed: asyncio.Event
    ) -> None:
        import aiomqtt

        for m in replay:
            await client.publish(m.topic, m.payload, m.qos, m.retain, timeout=self.settings.timeout_s)
            self.stats.published += 1
        replayed.set()
        while True:
            m = await self._queue.get()
            try:
                await client.publish(m.topic, m.payload, m.qos, m.retain, timeout=self.settings.timeout_s)
                self.stats.published += 1
            except aiomqtt.MqttError:
                self.stats.dropped[DROP_SEND_FAILED] += 1
                raise
            finally:
                self._queue.task_done()

    @staticmethod
    async def _wait_disconnected(client: aiomqtt.Client) -> None:
        # Nothing is subscribed: the iterator only ends, with MqttError, when the connection does.
        async for _ in client.messages:
            pass

    def _drop_queued(self, reason: str) -> None:
        while True:
            try:
                m = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            self._queue.task_done()
            if not m.retain:
                self.stats.dropped[reason] += 1
