"""Admission of migrations under KubeVirt's limits, as counts and a queue (pure).

A migration holds a slot from its admission until it is released (it ended, or a restarted
controller finished it): at most `parallel` in the cluster and `outbound_per_node` from one
source node. Migrations a restarted controller is still finishing hold slots they never
waited for (`hold`), even beyond the limits.

Order: waiters are admitted in arrival order. One whose source has no outbound slot left is
passed over, so a busy source never blocks the others (KubeVirt's behaviour), and it keeps
its place: when its source releases a slot it is that source's first waiter and, among all
admissible waiters, the oldest, so no source starves. After every event no waiter is
admissible; each event costs O(log sources) plus O(1) per migration it admits, whatever the
number of migrations the controller has ever run.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass

from controller.core.errors import InvalidArgument
from controller.core.model import MigrationId, NodeId


@dataclass(frozen=True, slots=True)
class Limits:
    """KubeVirt's defaults: 5 migrations in the cluster, 2 outbound per node."""

    parallel: int = 5
    outbound_per_node: int = 2

    def __post_init__(self) -> None:
        if self.parallel < 1 or self.outbound_per_node < 1:
            raise InvalidArgument(
                f"limits must be >= 1: parallel {self.parallel}, outbound per node {self.outbound_per_node}"
            )


class SlotQueue:
    """Live migrations counted in the cluster and per source, and the waiters, oldest first."""

    def __init__(self, limits: Limits | None = None) -> None:
        self._limits = limits or Limits()
        self._held: dict[MigrationId, NodeId] = {}  # migrations holding a slot -> source
        self._outbound: dict[NodeId, int] = {}  # slots held per source (no zero entries)
        self._waiting: dict[NodeId, deque[tuple[int, MigrationId]]] = {}  # per source, oldest first
        self._waiting_on: dict[MigrationId, NodeId] = {}  # waiter -> source
        # Sources whose oldest waiter may start as far as the source goes, by that waiter's
        # arrival number (entries whose waiter left or whose source filled up are skipped).
        self._ready: list[tuple[int, NodeId]] = []
        self._ready_seq: dict[NodeId, int] = {}  # what `_ready` holds for each source
        self._seq = 0

    # --- what is counted ---------------------------------------------------------

    @property
    def limits(self) -> Limits:
        return self._limits

    @property
    def live(self) -> int:
        """Migrations holding a slot."""
        return len(self._held)

    def outbound(self, source: NodeId) -> int:
        """Slots held by migrations from `source`."""
        return self._outbound.get(source, 0)

    @property
    def waiting(self) -> int:
        return len(self._waiting_on)

    def holds(self, migration_id: MigrationId) -> bool:
        return migration_id in self._held

    def is_waiting(self, migration_id: MigrationId) -> bool:
        return migration_id in self._waiting_on

    # --- events: each returns the migrations it admitted, oldest first --------------

    def request(self, migration_id: MigrationId, source: NodeId) -> list[MigrationId]:
        """`migration_id` from `source` asks for a slot: admitted now, or queued.

        Precondition: it neither holds a slot nor waits already (InvalidArgument otherwise).
        """
        self._check_new(migration_id)
        self._seq += 1
        queue = self._waiting.setdefault(source, deque())
        queue.append((self._seq, migration_id))
        self._waiting_on[migration_id] = source
        if len(queue) == 1:
            self._mark_ready(source)
        return self._admit()

    def hold(self, migration_id: MigrationId, source: NodeId) -> None:
        """Count a migration that runs without having waited here (one a restarted controller
        is finishing): it holds a slot, even beyond the limits, until released."""
        self._check_new(migration_id)
        self._take(migration_id, source)

    def release(self, migration_id: MigrationId) -> list[MigrationId]:
        """`migration_id` ended: its slot (if it held one) goes to the next waiters; a waiter
        leaves the queue. Unknown ids change nothing (release is idempotent)."""
        if migration_id in self._waiting_on:
            self.withdraw(migration_id)
            return []
        source = self._held.pop(migration_id, None)
        if source is None:
            return []
        left = self._outbound[source] - 1
        if left:
            self._outbound[source] = left
        else:
            del self._outbound[source]
        if source in self._waiting:
            self._mark_ready(source)
        return self._admit()

    def withdraw(self, migration_id: MigrationId) -> bool:
        """A waiter leaves the queue (its migration was cancelled); was it waiting?

        Nothing is admitted by this: no slot was freed.
        """
        source = self._waiting_on.pop(migration_id, None)
        if source is None:
            return False
        queue = self._waiting[source]
        was_head = queue[0][1] == migration_id
        for i, (_, waiter) in enumerate(queue):
            if waiter == migration_id:
                del queue[i]
                break
        if not queue:
            del self._waiting[source]
            self._ready_seq.pop(source, None)
        elif was_head:
            self._mark_ready(source)
        return True

    def set_limits(self, limits: Limits) -> list[MigrationId]:
        """New limits, at once: raised, waiters start; lowered, nothing running is stopped and
        no one starts until the counts are below the new limits."""
        self._limits = limits
        self._ready, self._ready_seq = [], {}
        for source in self._waiting:
            self._mark_ready(source)
        return self._admit()

    # --- internals -------------------------------------------------------------------

    def _check_new(self, migration_id: MigrationId) -> None:
        if migration_id in self._held or migration_id in self._waiting_on:
            raise InvalidArgument(f"migration {migration_id} already holds or waits for a slot")

    def _take(self, migration_id: MigrationId, source: NodeId) -> None:
        self._held[migration_id] = source
        self._outbound[source] = self._outbound.get(source, 0) + 1

    def _mark_ready(self, source: NodeId) -> None:
        """Offer `source`'s oldest waiter, if the source has an outbound slot for it."""
        if self.outbound(source) >= self._limits.outbound_per_node:
            return
        seq = self._waiting[source][0][0]
        if self._ready_seq.get(source) != seq:
            self._ready_seq[source] = seq
            heapq.heappush(self._ready, (seq, source))

    def _admit(self) -> list[MigrationId]:
        admitted: list[MigrationId] = []
        while self._ready and len(self._held) < self._limits.parallel:
            seq, source = heapq.heappop(self._ready)
            if self._ready_seq.get(source) != seq:
                continue  # stale: that waiter left, or the source was offered again since
            del self._ready_seq[source]
            queue = self._waiting[source]
            if queue[0][0] != seq or self.outbound(source) >= self._limits.outbound_per_node:
                continue
            _, migration_id = queue.popleft()
            del self._waiting_on[migration_id]
            if not queue:
                del self._waiting[source]
            self._take(migration_id, source)
            admitted.append(migration_id)
            if queue:
                self._mark_ready(source)
        return admitted
