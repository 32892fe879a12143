"""A tiny authoritative DNS server on loopback UDP for discovery tests (SRV and A records).

Answers from a mutable table, so tests can add and remove records between look-ups; anything
not in the table is NXDOMAIN.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


@dataclass
class DnsTable:
    """name -> records; names are absolute (trailing dot added when missing)."""

    srv: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # name -> (target, port)
    a: dict[str, list[str]] = field(default_factory=dict)  # name -> IPv4 addresses
    queries: list[str] = field(default_factory=list)  # "NAME TYPE" of every question seen


def _abs(name: str) -> str:
    return name if name.endswith(".") else name + "."


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, table: DnsTable) -> None:
        self.table = table
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a DatagramTransport here

    def datagram_received(self, data: bytes, addr: tuple[str | int, int]) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text()
        kind = dns.rdatatype.to_text(question.rdtype)
        self.table.queries.append(f"{name} {kind}")
        srv = {_abs(k): v for k, v in self.table.srv.items()}
        a = {_abs(k): v for k, v in self.table.a.items()}
        if question.rdtype == dns.rdatatype.SRV and name in srv:
            records = [f"0 10 {port} {_abs(target)}" for target, port in srv[name]]
            response.answer.append(dns.rrset.from_text_list(name, 5, "IN", "SRV", records))
        elif question.rdtype == dns.rdatatype.A and name in a:
            response.answer.append(dns.rrset.from_text_list(name, 5, "IN", "A", a[name]))
        elif name not in srv and name not in a:
            response.set_rcode(dns.rcode.NXDOMAIN)
        response.flags |= dns.flags.AA
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


@contextlib.asynccontextmanager
async def dns_server(table: DnsTable) -> AsyncIterator[int]:
    """Serve `table` on 127.0.0.1 (UDP, any port); yields the port."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(table), local_addr=("127.0.0.1", 0))
    try:
        yield int(transport.get_extra_info("sockname")[1])
    finally:
        transport.close()
