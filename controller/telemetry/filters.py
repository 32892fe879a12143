"""What one Controller.WatchTelemetry client asked to see, applied to hub items.

Policy:
- node_ids: samples of those nodes, migrations whose source or destination is one of
  them, health events of those nodes.
- guest_ids: samples of those guests, migrations of those guests; node health events
  are not about a guest and pass the guest filter.
- events_only: no samples at all.
- Hub items are shared by every subscriber and never modified: an item that passes
  whole is returned as is; a batch that passes in part becomes a new item.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from kvmtimer.v1 import controller_pb2 as cpb
from kvmtimer.v1 import node_pb2 as pb

from controller.core.errors import NotFound


@dataclass(frozen=True, slots=True)
class TelemetryFilter:
    """One client's filter; empty id sets mean "all"."""

    node_ids: frozenset[str] = frozenset()  # only these nodes
    guest_ids: frozenset[str] = frozenset()  # only these guests
    events_only: bool = False  # leave out vCPU samples

    @classmethod
    def of(
        cls, node_ids: Collection[str] = (), guest_ids: Collection[str] = (), events_only: bool = False
    ) -> TelemetryFilter:
        return cls(frozenset(node_ids), frozenset(guest_ids), events_only)

    def apply(self, item: cpb.ClusterTelemetry) -> cpb.ClusterTelemetry | None:
        """The part of `item` this client sees, or None."""
        kind = item.WhichOneof("item")
        if kind == "samples":
            return None if self.events_only else self._samples(item)
        if kind == "migration":
            m = item.migration.migration
            if self.node_ids and m.source not in self.node_ids and m.destination not in self.node_ids:
                return None
            if self.guest_ids and m.guest_id not in self.guest_ids:
                return None
            return item
        if kind == "node":
            return None if self.node_ids and item.node.node.node_id not in self.node_ids else item
        return item

    def _samples(self, item: cpb.ClusterTelemetry) -> cpb.ClusterTelemetry | None:
        batch = item.samples
        if not batch.samples:
            return None
        if self.node_ids and batch.samples[0].node_id not in self.node_ids:
            return None  # a batch comes from one node
        if not self.guest_ids:
            return item
        kept = [s for s in batch.samples if s.guest_id in self.guest_ids]
        if not kept:
            return None
        if len(kept) == len(batch.samples):
            return item
        return cpb.ClusterTelemetry(
            samples=pb.TelemetryBatch(samples=kept, dropped=batch.dropped, sequence=batch.sequence)
        )


def with_dropped(item: cpb.ClusterTelemetry, dropped: int, *, shared: bool) -> cpb.ClusterTelemetry:
    """`item` reporting the client's drop count; a `shared` item is copied, never modified."""
    if dropped == item.dropped:
        return item
    if shared:
        copy = cpb.ClusterTelemetry()
        copy.CopyFrom(item)
        item = copy
    item.dropped = dropped
    return item


def checked_filter(
    node_ids: Collection[str],
    guest_ids: Collection[str],
    events_only: bool,
    *,
    known_nodes: Collection[str],
    known_guests: Collection[str],
) -> TelemetryFilter:
    """A client's filter; NotFound for an id the cluster does not know (a typo would show nothing)."""
    unknown_nodes = sorted(set(node_ids) - set(known_nodes))
    if unknown_nodes:
        raise NotFound(f"no node {', '.join(map(repr, unknown_nodes))}")
    unknown_guests = sorted(set(guest_ids) - set(known_guests))
    if unknown_guests:
        raise NotFound(f"no guest {', '.join(map(repr, unknown_guests))}")
    return TelemetryFilter.of(node_ids, guest_ids, events_only)
