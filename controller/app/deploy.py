"""`kvmtimer controller` options for real deployments: mTLS, bearer token, probe port, DNS discovery.

Kept apart from controller/app/main.py, which wires them in with a few lines.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass

import grpc
from grpc_health.v1._async import HealthServicer  # health.aio, which the stubs lack

from controller.app import discovery
from controller.app.settings import ControllerSettings
from controller.service.cluster import Cluster
from node.runtime import serving, settings, tls
from node.runtime.aio import cancel_and_wait


def add_deploy_arguments(parser: argparse.ArgumentParser) -> None:
    serving.add_server_arguments(parser, token=True)
    parser.add_argument(
        "--discover-dns",
        type=discovery.target_arg,
        action="append",
        default=[],
        metavar="NAME[:PORT]",
        help="find nodes in DNS: NAME = SRV records, NAME:PORT = A/AAAA records (repeatable)",
    )
    parser.add_argument(
        "--discover-interval",
        type=float,
        default=discovery.DEFAULT_INTERVAL_S,
        help=f"seconds between DNS look-ups (default {discovery.DEFAULT_INTERVAL_S:g})",
    )
    parser.add_argument(
        "--discover-nameserver",
        type=nameserver,
        default=None,
        metavar="IP[:PORT]",
        help="ask this DNS server for SRV records instead of the system's resolvers",
    )
    settings.add_config_argument(parser)


@dataclass(frozen=True, slots=True)
class Security:
    """The controller's listener and its connections to the nodes."""

    server: serving.ServerSecurity  # how clients reach the controller
    node_credentials: grpc.ChannelCredentials | None  # mutual TLS towards the nodes (None = plaintext)


def security(s: ControllerSettings) -> Security:
    """Raises tls.TlsConfigError on inconsistent or unreadable TLS settings."""
    server = serving.server_security(s.tls, s.listen, token=s.token)
    files = s.tls.files()
    return Security(server, tls.channel_credentials(files) if files is not None else None)


def nameserver(value: str) -> tuple[str, int]:
    """argparse type for IP, IP:PORT or [IPv6]:PORT."""
    try:
        if value.startswith("["):
            host, _, rest = value[1:].partition("]")
            return host, int(rest[1:]) if rest.startswith(":") else 53
        if value.count(":") == 1:
            host, port = value.split(":")
            return host, int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected IP[:PORT], got {value!r}") from None
    return value, 53


class Extras:
    """The probe port and DNS discovery of one controller process."""

    def __init__(self, args: ControllerSettings, cluster: Cluster, health_servicer: HealthServicer) -> None:
        self.health = serving.HealthPort(health_servicer, args.health_listen)
        cluster.plaintext_off_loopback = args.tls.insecure  # the plaintext rule, towards the nodes
        self.discovery: discovery.Discovery | None = None
        self._task: asyncio.Task[None] | None = None
        if args.discover_dns:
            ns = args.discover_nameserver
            self.discovery = discovery.Discovery(
                [discovery.DnsTarget.parse(v) for v in args.discover_dns],
                discovery.SystemResolver([ns[0]] if ns else [], ns[1] if ns else 53),
                known_addresses=lambda: {n.address for n in cluster.nodes.values()},
                probe=lambda address: probe_node_id(cluster, address),
                register=cluster.register_node,
                interval_s=args.discover_interval,
            )

    async def start(self) -> None:
        await self.health.start()
        if self.discovery is not None:
            self._task = asyncio.create_task(self.discovery.run(), name="dns-discovery")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        await self.health.stop()


async def probe_node_id(cluster: Cluster, address: str) -> str:
    """What the node at `address` calls itself (GetHostInfo.node_id)."""
    client = cluster.connect("", address)
    try:
        info = await client.host_info()
    finally:
        await client.close()
    return str(info.node_id)
