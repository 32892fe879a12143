"""Mutual TLS, peer names and the bearer token on real grpc.aio servers (loopback, port 0).

Set-up: `kvmtimer certs` material (controller, client, node-a, node-b) plus a second, unrelated
CA; two nodes serving mTLS that accept only the `controller` certificate; a controller serving
mTLS that also requires a bearer token, and reaching the nodes over mTLS.

Refusals and how they surface:
* no client certificate, a certificate from another CA, or plaintext: the TLS handshake fails,
  so no RPC ever reaches a servicer. gRPC reports a failed handshake as UNAVAILABLE (the
  connection could not be established); the tests assert that code and that nothing changed;
* a valid certificate with a name the server does not accept (the CLI's `client` certificate on
  a node): PERMISSION_DENIED, on unary, server-streaming and bidirectional RPCs alike;
* a missing or wrong bearer token on the controller: UNAUTHENTICATED;
* the health service stays reachable with any valid certificate and without a token.
With everything valid, guests migrate across the two mTLS nodes in both directions, and the
`kvmtimer` client commands work over mTLS with the token.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from kvmtimer.v1 import controller_pb2 as cpb
from kvmtimer.v1 import controller_pb2_grpc as cpb_grpc
from kvmtimer.v1 import node_pb2 as pb
from kvmtimer.v1 import node_pb2_grpc

from controller.cli import certs, main
from controller.service.cluster import Cluster
from controller.service.server import build_server as build_controller
from controller.service.server import mark_serving as controller_serving
from node.core.clock import ManualClock
from node.core.features import ApiProfile, ClockMode, EcvLevel, HostFeatures
from node.core.host import Host
from node.runtime import tls
from node.service.server import build_server as build_node
from node.service.server import mark_serving as node_serving

TOKEN = "s3cret-token"
ECV = HostFeatures(ecv=EcvLevel(2), vhe=True, api_profile=ApiProfile.VM_COUNTER_OFFSET)
NO_ECV = HostFeatures(ecv=EcvLevel(0), vhe=False, api_profile=ApiProfile.VCPU_OFFSETS)


def files(pki: Path, name: str) -> tls.TlsFiles:
    return tls.TlsFiles(pki / f"{name}.crt", pki / f"{name}.key", pki / "ca.crt")


@dataclass
class SecureCluster:
    pki: Path
    rogue: Path  # another CA's bundle, with a certificate named "controller"
    cluster: Cluster
    node_ports: dict[str, int]
    controller_port: int

    @property
    def controller(self) -> str:
        return f"localhost:{self.controller_port}"

    def node(self, node_id: str) -> str:
        return f"localhost:{self.node_ports[node_id]}"

    def creds(self, name: str, pki: Path | None = None) -> grpc.ChannelCredentials:
        return tls.channel_credentials(files(pki or self.pki, name))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    good = tmp_path_factory.mktemp("pki")
    certs.generate(good, nodes=["node-a", "node-b"])
    rogue = tmp_path_factory.mktemp("rogue")
    certs.generate(rogue)
    return good, rogue


@pytest_asyncio.fixture
async def secure(pki: tuple[Path, Path]) -> AsyncIterator[SecureCluster]:
    good, rogue = pki
    async with contextlib.AsyncExitStack() as stack:
        clock = ManualClock()
        ports = {}
        for node_id, features in (("node-a", ECV), ("node-b", NO_ECV)):
            host = Host(node_id, features, clock, counter_base=10**12, clock_mode=ClockMode.SIMULATED)
            server, port, health = build_node(
                host,
                "127.0.0.1:0",
                credentials=tls.server_credentials(files(good, node_id)),
                interceptors=[tls.PeerNameInterceptor(tls.DEFAULT_NODE_CLIENTS)],
            )
            await server.start()
            await node_serving(health)
            stack.push_async_callback(server.stop, None)
            ports[node_id] = port
        cluster = Cluster(
            health_interval_s=0, node_credentials=tls.channel_credentials(files(good, "controller"))
        )
        stack.push_async_callback(cluster.stop)
        server, cport, health = build_controller(
            cluster,
            "127.0.0.1:0",
            credentials=tls.server_credentials(files(good, "controller")),
            interceptors=[tls.BearerTokenInterceptor(TOKEN)],
        )
        await server.start()
        await controller_serving(health)
        stack.push_async_callback(server.stop, None)
        yield SecureCluster(good, rogue, cluster, ports, cport)


@contextlib.asynccontextmanager
async def controller(
    sc: SecureCluster, creds: grpc.ChannelCredentials | None, token: str | None = TOKEN
) -> AsyncIterator[tuple[cpb_grpc.ControllerStub, list[tuple[str, str]] | None]]:
    async with tls.aio_channel(sc.controller, creds) as channel:
        yield cpb_grpc.ControllerStub(channel), (tls.with_token(None, token) if token else None)


async def register_both(sc: SecureCluster) -> None:
    async with controller(sc, sc.creds("client")) as (stub, md):
        for node_id in sc.node_ports:
            await stub.RegisterNode(
                cpb.RegisterNodeRequest(node_id=node_id, address=sc.node(node_id)), metadata=md, timeout=10
            )


@pytest.mark.asyncio
async def test_migrations_across_two_mtls_nodes(secure: SecureCluster) -> None:
    await register_both(secure)
    async with controller(secure, secure.creds("client")) as (stub, md):
        nodes = await stub.ListNodes(cpb.ListNodesRequest(), metadata=md)
        assert {n.node_id: n.healthy for n in nodes.nodes} == {"node-a": True, "node-b": True}
        guest = await stub.CreateGuest(
            cpb.CreateGuestRequest(guest_id="g1", vcpus=2, node_id="node-a"), metadata=md
        )
        assert guest.node_id == "node-a"
        for src, dst in (("node-a", "node-b"), ("node-b", "node-a")):
            record = await stub.Migrate(
                cpb.MigrateRequest(guest_id="g1", destination=dst, wait=True), metadata=md, timeout=30
            )
            assert record.phase == cpb.MIGRATION_PHASE_SUCCEEDED, record.reason
            assert (record.source, record.destination) == (src, dst)
            got = await stub.GetGuest(cpb.GetGuestRequest(guest_id="g1"), metadata=md)
            assert got.node_id == dst


async def guests(sc: SecureCluster) -> list[str]:
    async with controller(sc, sc.creds("client")) as (stub, md):
        resp = await stub.ListGuests(cpb.ListGuestsRequest(), metadata=md)
        return sorted(g.guest_id for g in resp.guests)


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["no-client-certificate", "other-ca", "plaintext"])
async def test_controller_refuses_clients_without_a_valid_certificate(
    secure: SecureCluster, how: str
) -> None:
    """The handshake fails: UNAVAILABLE, and no guest was created."""
    ca = (secure.pki / "ca.crt").read_bytes()
    creds = {
        "no-client-certificate": grpc.ssl_channel_credentials(root_certificates=ca),
        "other-ca": secure.creds("client", secure.rogue),
        "plaintext": None,
    }[how]
    if how == "other-ca":  # trusts our server, presents a certificate our CA never signed
        rogue = files(secure.rogue, "client")
        creds = grpc.ssl_channel_credentials(ca, rogue.key.read_bytes(), rogue.cert.read_bytes())
    async with controller(secure, creds) as (stub, md):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CreateGuest(
                cpb.CreateGuestRequest(guest_id="intruder", vcpus=1), metadata=md, timeout=5
            )
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
    assert "failed to connect" in (info.value.details() or "")
    assert await guests(secure) == []


@pytest.mark.asyncio
async def test_client_refuses_a_server_from_another_ca(secure: SecureCluster) -> None:
    """Mutual: a client holding our CA does not talk to a server the CA did not sign."""
    async with controller(secure, secure.creds("client", secure.rogue)) as (stub, md):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ListNodes(cpb.ListNodesRequest(), metadata=md, timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("token", "reason"), [(None, "missing bearer token"), ("guess", "invalid bearer token")]
)
async def test_controller_refuses_a_missing_or_wrong_token(
    secure: SecureCluster, token: str | None, reason: str
) -> None:
    await register_both(secure)
    async with controller(secure, secure.creds("client"), token) as (stub, md):
        for call in (
            stub.CreateGuest(cpb.CreateGuestRequest(guest_id="g2", vcpus=1), metadata=md),
            stub.ListNodes(cpb.ListNodesRequest(), metadata=md),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert reason in (info.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.WatchMigrations(cpb.WatchMigrationsRequest(), metadata=md):
                pass
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with tls.aio_channel(secure.controller, secure.creds("client")) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == 1  # SERVING, no token needed
    assert await guests(secure) == []


@pytest.mark.asyncio
async def test_node_accepts_only_the_controller_certificate(secure: SecureCluster) -> None:
    async with tls.aio_channel(secure.node("node-a"), secure.creds("client")) as channel:
        stub = node_pb2_grpc.NodeStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CreateVm(pb.CreateVmRequest(vm_id="rogue-vm"))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "accepts only ['controller']" in (info.value.details() or "")
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest()])):
                pass
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        health = health_pb2_grpc.HealthStub(channel)
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == 1
    async with tls.aio_channel(secure.node("node-a"), secure.creds("controller")) as channel:
        vms = await node_pb2_grpc.NodeStub(channel).ListVms(pb.ListVmsRequest())
        assert list(vms.vms) == []


@pytest.mark.asyncio
async def test_client_commands_over_mtls_with_token(
    secure: SecureCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    await register_both(secure)
    pki = secure.pki
    base = [
        "--controller",
        secure.controller,
        "--tls-cert",
        str(pki / "client.crt"),
        "--tls-key",
        str(pki / "client.key"),
        "--tls-ca",
        str(pki / "ca.crt"),
    ]
    code = await asyncio.to_thread(
        main, ["create-guest", "--id", "g3", "--node", "node-b", *base, "--token", TOKEN]
    )
    assert code == 0, capsys.readouterr().err
    code = await asyncio.to_thread(main, ["migrate", "g3", "--to", "node-a", *base, "--token", TOKEN])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["nodes", *base, "--token", "wrong"]) == 2
    assert "UNAUTHENTICATED: invalid bearer token" in capsys.readouterr().err
    assert await asyncio.to_thread(main, ["nodes", "--controller", secure.controller, "--token", TOKEN]) == 3
    assert await guests(secure) == ["g3"]


@pytest.mark.asyncio
async def test_controller_without_tls_refuses_plaintext_to_a_remote_node() -> None:
    """A deployed controller without TLS dials nodes off loopback only with --insecure."""
    from controller.core.errors import FailedPrecondition
    from tests.support.nodes import in_process_node

    cluster = Cluster(health_interval_s=0)
    cluster.plaintext_off_loopback = False
    with pytest.raises(FailedPrecondition, match=r"refusing plaintext gRPC to node n1 at node\.example:7000"):
        await cluster.register_node("n1", "node.example:7000")  # refused before any connection
    assert cluster.nodes == {}
    async with in_process_node(node_id="local") as node:  # loopback stays allowed
        await cluster.register_node("local", node.address)
    assert list(cluster.nodes) == ["local"]
    await cluster.stop()
