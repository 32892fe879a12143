"""MQTT test helpers: a mosquitto broker process on a free loopback port, a subscriber that
collects messages, a TCP proxy whose connections can be cut abruptly, and a fake Publisher."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt

from node.runtime.publisher import OutMessage
from tests.support.wait import until_sync


def mosquitto_binary() -> str | None:
    """Debian's mosquitto (`.ci/test` installs it), or None."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None


NO_MOSQUITTO = "no mosquitto binary (apt-get install mosquitto; .ci/test installs it)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Mosquitto:
    """One mosquitto process; stop() and start() again keep the same port."""

    binary: str
    workdir: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> None:
        assert self.proc is None, "already running"
        for _ in range(3):
            if not self.port:
                self.port = free_port()
            config = self.workdir / "mosquitto.conf"
            config.write_text(
                f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest none\n",
                encoding="utf-8",
            )
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            if self._wait_listening(self.proc, timeout_s):
                return
            self.stop()
            self.port = 0  # the port was taken meanwhile: pick another
        raise RuntimeError("mosquitto did not start")

    def _wait_listening(self, proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
        """True once the broker accepts connections; False if it exited or never listened."""
        with contextlib.suppress(TimeoutError):
            until_sync(
                lambda: port_open(self.port) or proc.poll() is not None, timeout_s=timeout_s, poll_s=0.02
            )
        return proc.poll() is None and port_open(self.port)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def mosquitto(workdir: Path) -> Iterator[Mosquitto]:
    binary = mosquitto_binary()
    assert binary is not None, NO_MOSQUITTO
    broker = Mosquitto(binary, workdir)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass(frozen=True)
class Received:
    topic: str
    payload: dict[str, object]
    qos: int
    retain: bool


@dataclass
class Subscriber:
    """Messages received so far; wait_for() polls them."""

    messages: list[Received] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_message(self, message: aiomqtt.Message) -> None:
        raw = message.payload
        assert isinstance(raw, bytes | bytearray)
        payload = json.loads(raw)
        assert isinstance(payload, dict)
        self.messages.append(Received(message.topic.value, payload, message.qos, message.retain))
        self._changed.set()

    def on(self, topic: str) -> list[Received]:
        return [m for m in self.messages if m.topic == topic]

    async def wait_for(self, predicate: Callable[[Received], bool], timeout_s: float = 10.0) -> Received:
        """The first message (received so far or later) matching `predicate`."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        seen = 0
        while True:
            for m in self.messages[seen:]:
                if predicate(m):
                    return m
            seen = len(self.messages)
            self._changed.clear()
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                topics = sorted({m.topic for m in self.messages})
                raise TimeoutError(f"no matching message within {timeout_s} s; topics seen: {topics}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)


@contextlib.asynccontextmanager
async def subscriber(port: int, topic: str) -> AsyncIterator[Subscriber]:
    """A separate MQTT client subscribed to `topic` (QoS 1) on 127.0.0.1:`port`."""
    sub = Subscriber()
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier=f"test-sub-{os.getpid()}-{free_port()}"
    ) as client:
        await client.subscribe(topic, qos=1)

        async def read() -> None:
            async for message in client.messages:
                sub.on_message(message)

        reader = asyncio.create_task(read())
        try:
            yield sub
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await reader


class Proxy:
    """A loopback TCP proxy to a broker; cut() closes every connection abruptly (as a crash
    or a network failure would), so the broker publishes the client's last will."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.close()

    def cut(self) -> None:
        """Reset every proxied connection (SO_LINGER 0: RST, no clean MQTT DISCONNECT)."""
        for w in list(self._writers):
            sock = w.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


@dataclass
class RecordingPublisher:
    """A fake Publisher: remembers every message it is given."""

    messages: list[OutMessage] = field(default_factory=list)

    async def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        self.messages.append(OutMessage(topic, payload, qos, retain))

    def on(self, topic: str) -> list[dict[str, object]]:
        out = []
        for m in self.messages:
            if m.topic == topic:
                payload = json.loads(m.payload)
                assert isinstance(payload, dict)
                out.append(payload)
        return out
