"""Find nodes through DNS (a Kubernetes headless Service) instead of hand-listed addresses.

`--discover-dns NAME` looks up SRV records of NAME (`_grpc._tcp.kvmtimer-node.NS.svc.cluster.local`
lists every ready pod of the headless Service by its stable name and the port); `NAME:PORT`
looks up the A/AAAA records of NAME (`kvmtimer-node.NS.svc.cluster.local` resolves to every
ready pod's IP) and dials each address at PORT, under its reverse-DNS name when there is one
(the pod's `pod.service.NS.svc.cluster.local`), so TLS checks a stable name.

Either way the node's id is what the node calls itself (`GetHostInfo.node_id`: the pod name on
Kubernetes). Names are looked up again every `--discover-interval` seconds: new nodes are
registered; a node that disappears from DNS stays registered (it may still hold guests) and the
health loop reports it down.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.resolver
import structlog

log = structlog.get_logger("kvmtimer.controller")

DEFAULT_INTERVAL_S = 10.0


class DiscoveryError(Exception):
    """A malformed --discover-dns value."""


@dataclass(frozen=True, slots=True)
class DnsTarget:
    """One --discover-dns value."""

    name: str  # DNS name to look up
    port: int | None  # None: SRV records carry the ports; else A/AAAA records at this port

    @classmethod
    def parse(cls, value: str) -> DnsTarget:
        """NAME (SRV) or NAME:PORT (A/AAAA)."""
        name, sep, port = value.rpartition(":")
        if not sep:
            name, port = value, ""
        elif not port.isdigit() or not 0 < int(port) < 65536:
            raise DiscoveryError(f"expected NAME or NAME:PORT, got {value!r}")
        name = name.strip().rstrip(".")
        if not name or "/" in name or " " in name:
            raise DiscoveryError(f"expected NAME or NAME:PORT, got {value!r}")
        return cls(name, int(port) if port else None)

    def __str__(self) -> str:
        return self.name if self.port is None else f"{self.name}:{self.port}"


def target_arg(value: str) -> str:
    """argparse type for --discover-dns."""
    try:
        DnsTarget.parse(value)
    except DiscoveryError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return value


def join_host_port(host: str, port: int) -> str:
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    return f"{host}:{port}"


class Resolver(Protocol):
    """DNS look-ups discovery needs (a fake one in the unit tests)."""

    async def srv(self, name: str) -> list[tuple[str, int]]:
        """(target host, port) of every SRV record; [] when the name has none."""
        ...

    async def addresses(self, name: str) -> list[str]:
        """IP addresses of every A/AAAA record; [] when the name does not resolve."""
        ...

    async def reverse(self, ip: str) -> str | None:
        """The PTR name of an address, or None."""
        ...


class SystemResolver:
    """SRV through dnspython (the system's resolv.conf), A/AAAA and PTR through libc (getaddrinfo)."""

    def __init__(self, nameservers: Sequence[str] = (), port: int = 53) -> None:
        self.nameservers = list(nameservers)
        self.port = port
        self._dns: dns.asyncresolver.Resolver | None = None

    def _resolver(self) -> dns.asyncresolver.Resolver:
        # Created on first use: reading resolv.conf fails where there is none, and A-record
        # discovery (libc) does not need it.
        if self._dns is None:
            self._dns = dns.asyncresolver.Resolver(configure=not self.nameservers)
            if self.nameservers:
                self._dns.nameservers = self.nameservers
                self._dns.port = self.port
        return self._dns

    async def srv(self, name: str) -> list[tuple[str, int]]:
        try:
            answer = await self._resolver().resolve(name, "SRV", search=True)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers):
            return []
        out = []
        for record in sorted(answer, key=lambda r: (r.priority, -r.weight, str(r.target))):
            target = str(record.target).rstrip(".")
            if target:  # "." means "no service here"
                out.append((target, int(record.port)))
        return out

    async def addresses(self, name: str) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        except socket.gaierror:
            return []
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    async def reverse(self, ip: str) -> str | None:
        loop = asyncio.get_running_loop()
        try:
            host, _ = await loop.getnameinfo((ip, 0), socket.NI_NAMEREQD)
        except (socket.gaierror, socket.herror, OSError):
            return None
        return host or None


async def endpoints(target: DnsTarget, resolver: Resolver) -> list[str]:
    """HOST:PORT addresses behind one target, in a stable order, without duplicates."""
    if target.port is None:
        found = [join_host_port(host, port) for host, port in await resolver.srv(target.name)]
    else:
        found = []
        for ip in await resolver.addresses(target.name):
            name = await resolver.reverse(ip)
            found.append(join_host_port(name or ip, target.port))
    return list(dict.fromkeys(found))


# Learn the node id at an address (GetHostInfo.node_id); raises on an unreachable node.
ProbeNodeId = Callable[[str], Awaitable[str]]
# Register node id at address with the cluster.
Register = Callable[[str, str], Awaitable[object]]


class Discovery:
    """Re-resolves the targets periodically and registers the nodes it has not seen yet."""

    def __init__(
        self,
        targets: Sequence[DnsTarget],
        resolver: Resolver,
        *,
        known_addresses: Callable[[], set[str]],
        probe: ProbeNodeId,
        register: Register,
        interval_s: float = DEFAULT_INTERVAL_S,
    ) -> None:
        self.targets = list(targets)
        self.resolver = resolver
        self.known_addresses = known_addresses
        self.probe = probe
        self.register = register
        self.interval_s = interval_s
        self.failures: dict[str, str] = {}  # address -> last error, for logging changes only

    async def run_once(self) -> list[str]:
        """One round: resolve every target, register new addresses; returns the node ids registered."""
        registered: list[str] = []
        for target in self.targets:
            try:
                found = await endpoints(target, self.resolver)
            except dns.exception.DNSException as err:
                log.warning("discovery_lookup_failed", target=str(target), error=str(err))
                continue
            known = self.known_addresses()
            for address in found:
                if address in known:
                    continue
                try:
                    node_id = await self.probe(address)
                    await self.register(node_id, address)
                except Exception as err:
                    reason = getattr(err, "message", None) or str(err) or type(err).__name__
                    if self.failures.get(address) != reason:
                        log.warning("discovery_register_failed", address=address, error=reason)
                    self.failures[address] = reason
                    continue
                self.failures.pop(address, None)
                registered.append(node_id)
                log.info("node_discovered", node_id=node_id, address=address, target=str(target))
        return registered

    async def run(self) -> None:
        """Rounds every `interval_s` until cancelled."""
        while True:
            try:
                await self.run_once()
            except Exception:
                log.exception("discovery_error")
            await asyncio.sleep(self.interval_s)
