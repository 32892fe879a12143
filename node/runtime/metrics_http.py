"""Prometheus text endpoint shared by every kvmtimer process (`--metrics-listen HOST:PORT`).

Served by asyncio in the process's own event loop rather than by prometheus-client's
threaded HTTP server: collectors read live emulator and cluster state, which belongs
to that loop, so a scrape must never run concurrently with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import TYPE_CHECKING

import structlog

from node.runtime.addr import listen_address

MAX_REQUEST_BYTES = 16_384
REQUEST_TIMEOUT_S = 5.0

# prometheus-client (with the http/email/wsgiref modules it pulls in) loads only when metrics
# are served: a process without --metrics-listen never imports it.
if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = structlog.get_logger("kvmtimer.metrics")


def add_metrics_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-listen",
        type=listen_address,
        default=None,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (default off; port 0 = any)",
    )


class MetricsServer:
    """GET /metrics (or /) -> the registry in Prometheus text format 0.0.4."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port."""
        self._server = await asyncio.start_server(self._handle, host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            status, ctype, body = self._respond(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            writer.close()
            return
        except Exception:
            log.exception("metrics_scrape_error")
            status, ctype, body = "500 Internal Server Error", "text/plain", b"scrape failed\n"
        header = (
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(ConnectionError):
            writer.write(header.encode() + body)
            await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    def _respond(self, head: bytes) -> tuple[str, str, bytes]:
        method, _, rest = head.decode("latin-1").partition(" ")
        path = rest.partition(" ")[0].partition("?")[0]
        if method != "GET":
            return "405 Method Not Allowed", "text/plain", b"only GET\n"
        if path not in ("/metrics", "/"):
            return "404 Not Found", "text/plain", b"try /metrics\n"
        from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

        return "200 OK", CONTENT_TYPE_PLAIN_0_0_4, generate_latest(self.registry)


async def start_metrics(registry: CollectorRegistry, address: tuple[str, int]) -> MetricsServer:
    """Serve `registry` on `address` and log `metrics_listening` with the bound port."""
    server = MetricsServer(registry)
    port = await server.start(*address)
    log.info("metrics_listening", host=address[0], port=port)
    return server
