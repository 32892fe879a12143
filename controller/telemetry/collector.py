"""Collects vCPU samples from every node into the cluster's telemetry hub.

Policy:
- Sampling costs the nodes CPU, so node streams are open only while someone watches:
  while `cluster.telemetry` has at least one subscriber (a Controller.WatchTelemetry
  client, the MQTT bridge, a recorder). With nobody subscribed no node samples at all.
  The hub tells the collector when subscriptions come and go; node registrations kick
  it too, and it re-checks node health every `check_interval_s`.
- One Node.WatchTelemetry stream per registered healthy node, at `rate_hz` (default
  10 Hz). A stream that breaks (node restarting, re-registered at a new address) is
  reopened after a backoff that doubles from `backoff_initial_s` to `backoff_max_s`
  and resets once a batch arrives. A node marked down is not streamed from until it
  is healthy again.
- Each batch becomes one `ClusterTelemetry(samples=batch)` item with `guest_id` filled
  in from the cluster's guests (and, for a destination VM during a migration, from
  the migration). Drops a node reports on its stream are added to `node_dropped_total`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import structlog
from kvmtimer.v1 import controller_pb2 as cpb

from controller.core.errors import NodeCallError
from controller.core.model import GuestId, MigrationId, NodeId
from controller.telemetry.view import ClusterView
from node.runtime.backoff import Backoff

DEFAULT_RATE_HZ = 10.0
GUEST_MAP_REFRESH_S = 0.5  # a VM that is no guest's is looked up again at most this often

log = structlog.get_logger("kvmtimer.telemetry")


@dataclass(slots=True)
class _Connection:
    """One open node stream."""

    node_id: NodeId  # the node streamed from
    guests: dict[str, str] = field(default_factory=dict)  # vm_id -> guest_id on that node
    unknown: dict[str, float] = field(default_factory=dict)  # vm_id -> when found to be no guest's
    last_dropped: int = 0  # the node's cumulative drop count on this stream
    batches: int = 0  # batches received


class TelemetryCollector:
    """Node telemetry streams of one Cluster, opened while the telemetry hub is watched."""

    def __init__(
        self,
        cluster: ClusterView,
        *,
        rate_hz: float = DEFAULT_RATE_HZ,
        max_batch: int = 0,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
        check_interval_s: float = 1.0,
    ) -> None:
        self.cluster = cluster
        self.rate_hz = rate_hz  # per vCPU, asked of every node
        self.max_batch = max_batch  # asked of every node (0 = one round per batch)
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.check_interval_s = check_interval_s
        self.node_dropped_total = 0  # samples the nodes dropped because the collector lagged
        self.batches_total = 0  # batches published into the hub
        self.samples_total = 0  # samples published into the hub
        self.reconnects_total = 0  # node streams reopened after a break
        self._streams: dict[NodeId, asyncio.Task[None]] = {}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def wanted(self) -> bool:
        """Someone watches the cluster's telemetry."""
        return self.cluster.telemetry.subscribers > 0

    @property
    def streaming(self) -> frozenset[NodeId]:
        """Nodes with a stream task right now."""
        return frozenset(n for n, t in self._streams.items() if not t.done())

    def start(self) -> None:
        if self._task is not None:
            return
        self._wake = asyncio.Event()
        self.cluster.telemetry.on_subscribers_changed(self.kick)
        self._task = asyncio.create_task(self._supervise(), name="telemetry-collector")

    def kick(self) -> None:
        """Re-check now (subscribers, nodes or their health changed)."""
        if self._wake is not None:
            self._wake.set()

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._streams.values()) if t is not None]
        self._task = None
        self._wake = None
        self._streams.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _supervise(self) -> None:
        assert self._wake is not None
        wake = self._wake
        while self._task is not None:
            wake.clear()
            try:
                self._reconcile()
            except Exception:
                log.exception("telemetry_collector_error")
            # asyncio.timeout, not wait_for: 3.11's wait_for loses a cancel that races
            # with the event being set (gh-86296), and stop() would wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.check_interval_s):
                    await wake.wait()

    def _reconcile(self) -> None:
        nodes = self.cluster.nodes
        wanted = {n for n, record in nodes.items() if record.healthy} if self.wanted else set()
        for node_id, task in list(self._streams.items()):
            if node_id not in wanted or task.done():
                task.cancel()
                del self._streams[node_id]
        for node_id in wanted - self._streams.keys():
            self._streams[node_id] = asyncio.create_task(
                self._follow(node_id), name=f"telemetry-node-{node_id}"
            )

    async def _follow(self, node_id: NodeId) -> None:
        """Stream from one node until cancelled, reopening the stream after breaks."""
        backoff = Backoff(self.backoff_initial_s, self.backoff_max_s)
        failing = False
        while True:
            client = self.cluster.clients.get(node_id)
            if client is None:
                return
            conn = _Connection(node_id)
            try:
                async for item in client.watch_telemetry(self.rate_hz, self.max_batch):
                    if conn.batches == 0:
                        backoff.reset()
                        if failing:
                            failing = False
                            log.info("telemetry_stream_resumed", node_id=node_id)
                    self._deliver(conn, item)
                reason = "the node ended the stream"
            except NodeCallError as err:
                reason = err.message
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                reason = "the call was cancelled (channel closed)"
            if not failing:
                failing = True
                log.info("telemetry_stream_broken", node_id=node_id, reason=reason, retry_s=backoff.current_s)
            self.reconnects_total += 1
            await asyncio.sleep(backoff.next_s())

    def _deliver(self, conn: _Connection, item: cpb.ClusterTelemetry) -> None:
        batch = item.samples
        conn.batches += 1
        if batch.dropped > conn.last_dropped:
            self.node_dropped_total += batch.dropped - conn.last_dropped
            conn.last_dropped = batch.dropped
        guests = conn.guests
        last_vm: str | None = None
        guest_id = ""
        samples = batch.samples
        for sample in samples:
            vm_id = sample.vm_id
            if vm_id != last_vm:
                last_vm = vm_id
                guest_id = guests.get(vm_id) or self._refresh(conn, vm_id)
            if guest_id:
                sample.guest_id = guest_id
        self.batches_total += 1
        self.samples_total += len(samples)
        self.cluster.telemetry.publish(item)

    def _refresh(self, conn: _Connection, vm_id: str) -> str:
        """The guest of a VM not in the node's map yet, or "": looked up by the VM's name (no
        scan of the inventory); one known to be no guest's is looked up again at most every
        GUEST_MAP_REFRESH_S."""
        now = time.monotonic()
        checked = conn.unknown.get(vm_id)
        if checked is not None and now - checked < GUEST_MAP_REFRESH_S:
            return ""
        guest_id = guest_of_vm(self.cluster, conn.node_id, vm_id)
        if guest_id:
            conn.guests[vm_id] = guest_id
            conn.unknown.pop(vm_id, None)
        else:
            conn.unknown[vm_id] = now
        return guest_id


def guest_of_vm(cluster: ClusterView, node_id: NodeId, vm_id: str) -> str:
    """The guest whose VM `vm_id` on `node_id` is, or "", in constant time.

    The controller names a guest's VMs after the guest (controller.core.model): `<guest_id>@<n>`
    at creation and `<guest_id>@<migration_id>` for the destination VM of a migration, which is
    the guest's while that migration is in flight to the node and after the guest moved onto it.
    Guest ids hold no '@'.
    """
    guest_id, sep, suffix = vm_id.partition("@")
    guest = cluster.guests.get(GuestId(guest_id)) if sep else None
    if guest is None:
        return ""
    if guest.node_id == node_id and guest.vm_id == vm_id:
        return guest.guest_id
    m = cluster.migrations.get(MigrationId(suffix))
    if m is not None and m.guest_id == guest_id and m.destination == node_id and not m.phase.terminal:
        return guest.guest_id
    return ""
