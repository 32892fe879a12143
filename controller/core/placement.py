"""Placement policy: spread guests by load over healthy nodes, from a per-node load index."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from controller.core.errors import FailedPrecondition
from controller.core.model import GuestId, GuestRecord, GuestState, NodeId, NodeRecord


class NodeLoads:
    """Guests and vCPUs placed per node, and the lost guests per node, kept as guests change.

    The adapter calls `update(guest)` whenever a guest is placed, moved or changes state (the
    controller does so wherever it commits a guest to its state file) and `remove` when it is
    forgotten, so reading a node's load costs O(1), never a scan of every guest. Lost guests
    weigh nothing (as `node_load`).
    """

    def __init__(self) -> None:
        self._where: dict[GuestId, tuple[NodeId, int, GuestState]] = {}  # as last counted
        self._vcpus: dict[NodeId, int] = {}
        self._guests: dict[NodeId, int] = {}
        self._lost: dict[NodeId, set[GuestId]] = {}

    def update(self, guest: GuestRecord) -> None:
        """Count `guest` where and as it is now (idempotent)."""
        now = (guest.node_id, guest.vcpus, guest.state)
        if self._where.get(guest.guest_id) == now:
            return
        self.remove(guest.guest_id)
        self._where[guest.guest_id] = now
        self._count(guest.guest_id, now, +1)

    def remove(self, guest_id: GuestId) -> None:
        """Forget a guest (destroyed, or its creation rolled back)."""
        was = self._where.pop(guest_id, None)
        if was is not None:
            self._count(guest_id, was, -1)

    def vcpus(self, node_id: NodeId) -> int:
        """vCPUs of the live guests on a node (what placement spreads)."""
        return self._vcpus.get(node_id, 0)

    def guests(self, node_id: NodeId) -> int:
        """Live guests on a node."""
        return self._guests.get(node_id, 0)

    def lost(self, node_id: NodeId) -> list[GuestId]:
        """Lost guests last seen on a node, sorted."""
        return sorted(self._lost.get(node_id, ()))

    def _count(self, guest_id: GuestId, where: tuple[NodeId, int, GuestState], sign: int) -> None:
        node_id, vcpus, state = where
        if state.alive:
            _add(self._vcpus, node_id, sign * vcpus)
            _add(self._guests, node_id, sign)
        elif state is GuestState.LOST:
            lost = self._lost.setdefault(node_id, set())
            if sign > 0:
                lost.add(guest_id)
            else:
                lost.discard(guest_id)
                if not lost:
                    del self._lost[node_id]


def _add(counts: dict[NodeId, int], node_id: NodeId, delta: int) -> None:
    value = counts.get(node_id, 0) + delta
    if value:
        counts[node_id] = value
    else:
        counts.pop(node_id, None)


def place(
    nodes: Iterable[NodeRecord],
    load: Callable[[NodeId], int],
    *,
    exclude: frozenset[NodeId] = frozenset(),
    cntfrq_hz: int | None = None,
) -> NodeRecord:
    """Least-loaded healthy node (ties: by node id), optionally with a given counter frequency.

    `load`: a node's vCPUs (NodeLoads.vcpus); O(nodes), whatever the number of guests.
    """
    candidates = [
        n
        for n in nodes
        if n.healthy and n.node_id not in exclude and (cntfrq_hz is None or n.features.cntfrq_hz == cntfrq_hz)
    ]
    if not candidates:
        freq = f" with a {cntfrq_hz} Hz counter" if cntfrq_hz is not None else ""
        raise FailedPrecondition(f"no healthy node{freq} available")
    return min(candidates, key=lambda n: (load(n.node_id), n.node_id))
