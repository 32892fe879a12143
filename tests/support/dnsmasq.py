"""A real DNS server for discovery tests: Debian's dnsmasq, authoritative for a test domain only.

`dnsmasq_server` runs it in the foreground with no upstream servers, no /etc/hosts and no
configuration file, serving exactly the SRV and A (+PTR) records given, on a loopback address and
port. `prefix` runs it inside a network namespace (`ip netns exec NS`).
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from tests.support.outside import stop


@dataclass(frozen=True, slots=True)
class Zone:
    domain: str  # the test domain dnsmasq answers for (nothing is forwarded)
    srv: Sequence[tuple[str, str, int]] = ()  # (name, target, port)
    hosts: Sequence[tuple[str, str]] = ()  # (name, IPv4): A record, and PTR for the first name of an IP
    extra: Sequence[str] = field(default=())  # more dnsmasq options


def arguments(binary: str, zone: Zone, address: str, port: int) -> list[str]:
    args = [
        binary,
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--pid-file=",
        "--user=root",
        "--log-facility=-",
        "--log-queries",
        "--bind-interfaces",
        f"--listen-address={address}",
        f"--port={port}",
        f"--local=/{zone.domain}/",
        f"--domain={zone.domain}",
    ]
    args += [f"--srv-host={name},{target},{srv_port}" for name, target, srv_port in zone.srv]
    args += [f"--host-record={name},{ip}" for name, ip in zone.hosts]
    return [*args, *zone.extra]


def answers(address: str, port: int, name: str, kind: str) -> list[str]:
    """Ask the server directly (UDP); the records' text, [] on NXDOMAIN/no answer."""
    reply = dns.query.udp(dns.message.make_query(name, kind), address, port=port, timeout=1.0)
    if reply.rcode() != dns.rcode.NOERROR:
        return []
    return [item.to_text() for rrset in reply.answer for item in rrset]


@contextlib.contextmanager
def dnsmasq_server(
    binary: str, zone: Zone, *, address: str = "127.0.0.1", port: int, prefix: Sequence[str] = ()
) -> Iterator[subprocess.Popen[str]]:
    """Run dnsmasq until the block ends; ready once it answers a query for one of its names."""
    with tempfile.TemporaryFile("w+") as log:  # its query log (a pipe could fill up)
        proc = subprocess.Popen(
            [*prefix, *arguments(binary, zone, address, port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
        )
        try:
            probe, kind = (zone.srv[0][0], "SRV") if zone.srv else (zone.hosts[0][0], "A")
            deadline = time.monotonic() + 15
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"dnsmasq exited {proc.returncode}: {log.read()}")
                if not prefix:  # from outside a namespace it cannot be asked; the caller waits
                    with contextlib.suppress(dns.exception.Timeout, OSError):
                        if answers(address, port, probe, kind):
                            break
                else:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError("dnsmasq did not answer within 15 s")
                time.sleep(0.05)
            yield proc
        finally:
            stop(proc)
