"""The node pool: registered nodes, their clients and their health."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import grpc
import structlog

from controller.clients.node import Health, NodeClient
from controller.core.errors import FailedPrecondition, InvalidArgument, NodeCallError, NotFound, Unavailable
from controller.core.model import NodeId, NodeRecord
from node.core.features import ClockMode
from node.runtime.addr import is_loopback
from node.wire import features_from_info

log = structlog.get_logger("kvmtimer.controller")

HealthListener = Callable[[NodeRecord], None]
# A node that does not answer its health check in time is marked down only after this many
# such rounds in a row (Kubernetes' probe failureThreshold default): a host busy for a moment is
# not a dead host, and marking it down refuses migrations to it. A refused or NOT_SERVING
# answer marks it down at once.
SLOW_CHECKS_TO_DOWN = 3
# How long a node has to answer one health check.
CHECK_TIMEOUT_S = 1.0
# A round during which this controller's own event loop ran this late (a fraction of the check
# timeout) judges no node by its timeouts: the answers may have come in time and waited on us.
LATE_LOOP_FRACTION = 0.5


class LoopLag:
    """How late this process's event loop runs: a task wakes every `interval_s` and records by
    how much it overslept (the time other callbacks held the loop)."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.max_s = 0.0  # the worst lag since the last take_max()
        self.worst_s = 0.0  # the worst lag since the start
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def take_max(self) -> float:
        """The worst lag seen since the previous call (and reset it)."""
        worst, self.max_s = self.max_s, 0.0
        return worst

    def note(self, lag_s: float) -> None:
        self.max_s = max(self.max_s, lag_s)
        self.worst_s = max(self.worst_s, lag_s)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(self.interval_s)
            self.note(max(0.0, loop.time() - t0 - self.interval_s))


class NodePool:
    """Nodes by id, one client each, health as last checked."""

    def __init__(
        self,
        *,
        node_timeout_s: float = 5.0,
        node_credentials: grpc.ChannelCredentials | None = None,
        node_server_name: str | None = None,
    ) -> None:
        """`node_credentials`: mutual TLS towards the nodes (None = plaintext)."""
        self.node_timeout_s = node_timeout_s
        self.node_credentials = node_credentials
        self.node_server_name = node_server_name
        # Without node_credentials: may nodes off loopback be dialled in plaintext? A deployed
        # controller allows it only with --insecure (controller/deploy.py).
        self.plaintext_off_loopback = True
        self.nodes: dict[NodeId, NodeRecord] = {}
        self.clients: dict[NodeId, NodeClient] = {}
        self.on_registered: list[HealthListener] = []  # called after a (re-)registration
        self.on_health_changed: list[HealthListener] = []  # called when a node goes up or down
        self.slow_checks: dict[NodeId, int] = {}  # health rounds in a row without an answer in time
        self.loop_lag = LoopLag()  # this controller's own event-loop lag (started by start())
        self.inconclusive_rounds = 0  # rounds whose timeouts were not held against the nodes
        # One registration of a node at a time: two at once (self-registration and DNS discovery)
        # would each open a client and the later would close the one the earlier installed,
        # under whoever was already using it.
        self._registering: dict[NodeId, asyncio.Lock] = {}

    def start(self) -> None:
        """Start measuring the event loop's lag (health rounds use it)."""
        self.loop_lag.start()

    def connect(self, node_id: str, address: str) -> NodeClient:
        """A client for the node at `address`, with the pool's transport security.

        Raises FailedPrecondition for plaintext to a non-loopback node when that is not allowed.
        """
        if self.node_credentials is None and not self.plaintext_off_loopback and not is_loopback(address):
            raise FailedPrecondition(
                f"refusing plaintext gRPC to node {node_id or address} at {address}: give the controller "
                "--tls-cert/--tls-key/--tls-ca, or --insecure"
            )
        return NodeClient(
            node_id,
            address,
            timeout_s=self.node_timeout_s,
            credentials=self.node_credentials,
            server_name=self.node_server_name,
        )

    async def register(self, node_id: str, address: str) -> NodeRecord:
        """Add (or re-address) a node; its features come from the node itself.

        Registering a known node again at the same address (self-registration repeats, DNS
        discovery) keeps its connection, which in-flight migrations may be using.
        """
        if not node_id or not address:
            raise InvalidArgument("node_id and address are required")
        async with self._registering.setdefault(NodeId(node_id), asyncio.Lock()):
            return await self._register(node_id, address)

    async def _register(self, node_id: str, address: str) -> NodeRecord:
        existing = self.clients.get(NodeId(node_id))
        reuse = existing is not None and existing.address == address
        client = existing if existing is not None and reuse else self.connect(node_id, address)
        try:
            info = await client.host_info()
        except NodeCallError as err:
            if not reuse:
                await client.close()
            raise Unavailable(f"cannot reach node {node_id} at {address}: {err.detail or err.code}") from None
        if info.node_id != node_id:
            if not reuse:
                await client.close()
            raise InvalidArgument(f"the node at {address} calls itself {info.node_id!r}, not {node_id!r}")
        known = self.nodes.get(NodeId(node_id))
        if reuse and known is not None:
            known.features = features_from_info(info)
            self.set_health(known.node_id, True, "")
            for listener in self.on_registered:
                listener(known)
            return known
        old = self.clients.pop(NodeId(node_id), None)
        if old is not None:
            await old.close()
        record = NodeRecord(
            NodeId(node_id), address, features_from_info(info), ClockMode(info.clock_mode), healthy=True
        )
        self.nodes[record.node_id] = record
        self.clients[record.node_id] = client
        log.info(
            "node_registered", node_id=node_id, address=address, api_profile=record.features.api_profile.name
        )
        for listener in self.on_registered:
            listener(record)
        return record

    def node(self, node_id: str) -> NodeRecord:
        try:
            return self.nodes[NodeId(node_id)]
        except KeyError:
            raise NotFound(f"no node {node_id!r}") from None

    def client(self, node_id: NodeId) -> NodeClient:
        return self.clients[node_id]

    async def check_health(self) -> None:
        """One round of health checks on every node.

        A check that timed out counts against its node only if this controller's event loop
        was on time during the round (its lag, and the round's overrun of the check timeout,
        under LATE_LOOP_FRACTION of it): otherwise the answer may have arrived in time and
        waited for us, which is not the node's fault; such a round neither counts nor clears.
        """
        loop = asyncio.get_running_loop()
        self.loop_lag.take_max()
        t0 = loop.time()
        clients = list(self.clients.items())
        results = await asyncio.gather(*(c.check_health(timeout_s=CHECK_TIMEOUT_S) for _, c in clients))
        lag_s = max(self.loop_lag.take_max(), loop.time() - t0 - CHECK_TIMEOUT_S)
        late = lag_s >= LATE_LOOP_FRACTION * CHECK_TIMEOUT_S
        if late and Health.SLOW in results:
            self.inconclusive_rounds += 1
            log.info("health_round_inconclusive", loop_lag_s=round(lag_s, 3), slow=results.count(Health.SLOW))
        for (node_id, _), health in zip(clients, results, strict=True):
            if health is Health.SLOW:
                if not late:
                    self._slow(node_id, "health check timed out")
                continue
            self.slow_checks.pop(node_id, None)
            ok = health is Health.SERVING
            self.set_health(node_id, ok, "" if ok else "health check failed")

    def call_failed(self, node_id: NodeId, code: str, reason: str) -> None:
        """A call to the node got no answer (`code`: its gRPC status name). Refused (UNAVAILABLE):
        down at once, as a refused health check. Timed out: one more slow answer, counted with
        the timed-out health checks (a busy host is not a dead one). Anything else: no change."""
        if code == "UNAVAILABLE":
            self.set_health(node_id, False, reason)
        elif code == "DEADLINE_EXCEEDED":
            self._slow(node_id, f"call timed out ({reason})")

    def _slow(self, node_id: NodeId, what: str) -> None:
        slow = self.slow_checks[node_id] = self.slow_checks.get(node_id, 0) + 1
        if slow >= SLOW_CHECKS_TO_DOWN:
            self.set_health(node_id, False, f"{what}; {slow} timeouts in a row")

    def set_health(self, node_id: NodeId, ok: bool, reason: str) -> None:
        node = self.nodes.get(node_id)
        if node is None or node.healthy == ok:
            return
        node.healthy, node.last_error = ok, reason
        log.info("node_health_changed", node_id=node_id, healthy=ok, reason=reason)
        for listener in self.on_health_changed:
            listener(node)

    async def close(self) -> None:
        await self.loop_lag.stop()
        for client in self.clients.values():
            await client.close()
