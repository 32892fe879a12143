"""Helpers to run node servers in-process (grpc.aio on 127.0.0.1:0) and as real processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

import grpc
from kvmtimer.v1 import node_pb2_grpc

from node.core.clock import ManualClock
from node.core.features import ClockMode, HostFeatures
from node.core.host import Host
from node.service.server import build_server, mark_serving


@dataclass
class InProcessNode:
    """A node server running in this event loop, with a connected client stub."""

    host: Host
    server: grpc.aio.Server
    port: int
    channel: grpc.aio.Channel
    stub: node_pb2_grpc.NodeStub

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def in_process_node(
    features: HostFeatures | None = None,
    *,
    node_id: str = "node-0",
    clock: ManualClock | None = None,
    counter_base: int = 0,
) -> AsyncIterator[InProcessNode]:
    """Serve a simulated host on an ephemeral loopback port for the duration of the block."""
    host = Host(
        node_id,
        features or HostFeatures(),
        clock or ManualClock(),
        counter_base=counter_base,
        clock_mode=ClockMode.SIMULATED,
    )
    server, port, health_servicer = build_server(host)
    await server.start()
    await mark_serving(health_servicer)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield InProcessNode(host, server, port, channel, node_pb2_grpc.NodeStub(channel))
    finally:
        await channel.close(None)
        await server.stop(grace=None)


@dataclass
class NodeProcess:
    """A real `kvmtimer node` process."""

    proc: subprocess.Popen[str]
    port: int
    first_log: dict[str, object]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def kvmtimer_command() -> list[str]:
    return [sys.executable, "-m", "controller.cli"]


def wait_for_log_event(proc: subprocess.Popen[str], event: str, timeout_s: float = 20.0) -> dict[str, object]:
    """Read JSON log lines from the process's stderr until `event` appears."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            if proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode} before logging {event!r}")
            continue
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("event") == event:
                return record
    raise TimeoutError(f"no {event!r} log line within {timeout_s} s")


@contextlib.contextmanager
def kvmtimer_process(
    command: str, args: Sequence[str], *, stop_timeout_s: float = 15.0, prefix: Sequence[str] = ()
) -> Iterator[subprocess.Popen[str]]:
    """Run `kvmtimer COMMAND ARGS` with its JSON logs on a pipe; SIGTERM (then SIGKILL) it at the end.

    `prefix`: a command that runs it, e.g. `ip netns exec NS` (which execs, so the PID stays).
    """
    proc = subprocess.Popen(
        [*prefix, *kvmtimer_command(), command, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=stop_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@contextlib.contextmanager
def node_process(args: Sequence[str]) -> Iterator[NodeProcess]:
    """Start `kvmtimer node ARGS --listen 127.0.0.1:0`, wait until it listens; SIGTERM it at the end."""
    with kvmtimer_process("node", ["--listen", "127.0.0.1:0", *args], stop_timeout_s=10.0) as proc:
        record = wait_for_log_event(proc, "node_listening")
        port = record["port"]
        assert isinstance(port, int)
        yield NodeProcess(proc, port, record)


async def wait_healthy(address: str, timeout_s: float = 10.0) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.05)
