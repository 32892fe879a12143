"""Node discovery through DNS (controller/app/discovery.py) with real node servers on loopback.

Edge cases: --discover-dns parsing (SRV name, NAME:PORT, IPv6 literal results bracketed, bad
ports); SRV records registering every node under the id it reports itself (GetHostInfo), not a
hand-listed one; A records dialled under their reverse-DNS name when there is one, else the IP;
re-resolution registering only new addresses (a known node keeps its connection); an unreachable
address logged and retried on the next round; a failed look-up of one target not stopping the
others; the real resolver against a DNS server on loopback (SRV) and the system's `localhost`
(A + PTR); a node registering itself again at the same address keeping its client.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import dns.exception
import pytest

from controller.app import discovery
from controller.app.deploy import probe_node_id
from controller.service.cluster import Cluster
from tests.support.dns import DnsTable, dns_server
from tests.support.nodes import InProcessNode, in_process_node


@pytest.mark.parametrize(
    ("value", "name", "port"),
    [
        (
            "_grpc._tcp.kvmtimer-node.kv.svc.cluster.local",
            "_grpc._tcp.kvmtimer-node.kv.svc.cluster.local",
            None,
        ),
        ("kvmtimer-node.kv.svc:7000", "kvmtimer-node.kv.svc", 7000),
        ("nodes.example.:7000", "nodes.example", 7000),
    ],
)
def test_target_parse(value: str, name: str, port: int | None) -> None:
    target = discovery.DnsTarget.parse(value)
    assert (target.name, target.port) == (name, port)


@pytest.mark.parametrize("value", ["", ":7000", "nodes:0", "nodes:70000", "nodes:x", "a b:1"])
def test_target_parse_refuses(value: str) -> None:
    with pytest.raises(discovery.DiscoveryError):
        discovery.DnsTarget.parse(value)


class FakeResolver:
    def __init__(self) -> None:
        self.srv_records: dict[str, list[tuple[str, int]]] = {}
        self.a_records: dict[str, list[str]] = {}
        self.ptr: dict[str, str] = {}
        self.fail: set[str] = set()

    async def srv(self, name: str) -> list[tuple[str, int]]:
        if name in self.fail:
            raise dns.exception.DNSException("timed out")  # type: ignore[no-untyped-call]
        return list(self.srv_records.get(name, []))

    async def addresses(self, name: str) -> list[str]:
        return list(self.a_records.get(name, []))

    async def reverse(self, ip: str) -> str | None:
        return self.ptr.get(ip)


@pytest.mark.asyncio
async def test_endpoints_from_a_records_use_reverse_names() -> None:
    r = FakeResolver()
    r.a_records["nodes"] = ["10.0.0.5", "10.0.0.6", "fd00::7", "10.0.0.5"]
    r.ptr["10.0.0.5"] = "node-0.nodes.kv.svc.cluster.local"
    found = await discovery.endpoints(discovery.DnsTarget("nodes", 7000), r)
    assert found == ["node-0.nodes.kv.svc.cluster.local:7000", "10.0.0.6:7000", "[fd00::7]:7000"]


@contextlib.asynccontextmanager
async def nodes(*ids: str) -> AsyncIterator[dict[str, InProcessNode]]:
    async with contextlib.AsyncExitStack() as stack:
        yield {i: await stack.enter_async_context(in_process_node(node_id=i)) for i in ids}


def make_discovery(cluster: Cluster, targets: list[str], resolver: discovery.Resolver) -> discovery.Discovery:
    return discovery.Discovery(
        [discovery.DnsTarget.parse(t) for t in targets],
        resolver,
        known_addresses=lambda: {n.address for n in cluster.nodes.values()},
        probe=lambda address: probe_node_id(cluster, address),
        register=cluster.register_node,
        interval_s=0.01,
    )


@pytest.mark.asyncio
async def test_srv_discovery_registers_new_nodes_under_their_own_ids() -> None:
    cluster = Cluster(health_interval_s=0)
    async with nodes("pool-a-0", "pool-a-1", "pool-b-0") as n:
        r = FakeResolver()
        r.srv_records["_grpc._tcp.nodes"] = [
            ("127.0.0.1", n["pool-a-0"].port),
            ("127.0.0.1", n["pool-a-1"].port),
        ]
        d = make_discovery(cluster, ["_grpc._tcp.nodes", "_grpc._tcp.broken"], r)
        r.fail.add("_grpc._tcp.broken")
        assert sorted(await d.run_once()) == ["pool-a-0", "pool-a-1"]
        clients = dict(cluster.clients)
        assert await d.run_once() == []  # nothing new: no re-registration, same connections
        assert cluster.clients == clients
        dead = ("127.0.0.1", 1)
        r.srv_records["_grpc._tcp.nodes"] += [("127.0.0.1", n["pool-b-0"].port), dead]
        assert await d.run_once() == ["pool-b-0"]
        assert d.failures == {"127.0.0.1:1": d.failures["127.0.0.1:1"]}
        assert sorted(cluster.nodes) == ["pool-a-0", "pool-a-1", "pool-b-0"]
        assert cluster.nodes["pool-b-0"].address == f"127.0.0.1:{n['pool-b-0'].port}"  # type: ignore[index]
        await cluster.stop()


@pytest.mark.asyncio
async def test_real_resolver_srv_from_a_dns_server_on_loopback() -> None:
    cluster = Cluster(health_interval_s=0)
    table = DnsTable()
    async with nodes("n0", "n1") as n, dns_server(table) as dns_port:
        table.srv["_grpc._tcp.kvmtimer-node.kv.svc.cluster.local"] = [
            ("localhost", n["n0"].port),
            ("localhost", n["n1"].port),
        ]
        resolver = discovery.SystemResolver(["127.0.0.1"], dns_port)
        d = make_discovery(cluster, ["_grpc._tcp.kvmtimer-node.kv.svc.cluster.local"], resolver)
        assert sorted(await d.run_once()) == ["n0", "n1"]
        assert {cluster.nodes[k].address for k in cluster.nodes} == {
            f"localhost:{n['n0'].port}",
            f"localhost:{n['n1'].port}",
        }
        assert "_grpc._tcp.kvmtimer-node.kv.svc.cluster.local. SRV" in table.queries
        assert await resolver.srv("_grpc._tcp.absent.kv.svc.cluster.local") == []
        await cluster.stop()


@pytest.mark.asyncio
async def test_real_resolver_a_records_of_localhost() -> None:
    cluster = Cluster(health_interval_s=0)
    async with nodes("solo") as n:
        resolver = discovery.SystemResolver()
        assert "127.0.0.1" in await resolver.addresses("localhost")
        d = make_discovery(cluster, [f"localhost:{n['solo'].port}"], resolver)
        assert await d.run_once() == ["solo"]
        name = await resolver.reverse("127.0.0.1") or "127.0.0.1"
        assert cluster.nodes["solo"].address == f"{name}:{n['solo'].port}"  # type: ignore[index]
        await cluster.stop()


@pytest.mark.asyncio
async def test_registering_again_at_the_same_address_keeps_the_connection() -> None:
    cluster = Cluster(health_interval_s=0)
    async with nodes("n0", "n1") as n:
        first = await cluster.register_node("n0", n["n0"].address)
        client = cluster.clients[first.node_id]
        again = await cluster.register_node("n0", n["n0"].address)
        assert again is first and cluster.clients[first.node_id] is client
        await cluster.register_node("n0", f"localhost:{n['n0'].port}")  # moved: new connection
        assert cluster.clients[first.node_id] is not client
        await cluster.stop()
