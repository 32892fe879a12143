"""Realtime skew between hosts as the migrations measured it (`kvmtimer report` prints it).

Every finished migration records `realtime_skew_ns`, the destination's realtime minus the
source's at the instants the move used (the hosts' deliberate skews, drifts and steps). An
offset method carries guest time by realtime, so its counter error is exactly that skew
(spec §4.4, case 39); BY_VALUE stalls guest time for the downtime instead. This module
summarises it per pair of hosts (what each pair of moves showed) and per host: each host's
realtime against a reference host (the first one, by id, that a migration touched), found by
walking from the reference along the pairs migrations linked (a pair's mean skew per step).
A host no migration links to the reference has no figure. Pure: items in, values out.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass

from kvmtimer.v1 import controller_pb2 as cpb

OFFSET_METHODS = frozenset({cpb.MIGRATION_METHOD_VCPU_OFFSETS, cpb.MIGRATION_METHOD_VM_COUNTER_OFFSET})


@dataclass(frozen=True, slots=True)
class PairSkew:
    """The succeeded migrations from one host to another."""

    source: str
    destination: str
    migrations: int
    skew_ns_min: int  # destination realtime minus source realtime, the smallest seen
    skew_ns_max: int  # ... and the largest (they differ when the hosts drift or step)
    skew_ns_mean: int
    offset_moves: int  # of them by an offset method
    offset_error_ticks_max: int | None  # their worst |counter error| (None: none known)


@dataclass(frozen=True, slots=True)
class SkewSummary:
    pairs: list[PairSkew]  # by (source, destination)
    reference: str | None  # the host the others are measured against (None: no migration)
    hosts: dict[str, int | None]  # host -> its realtime minus the reference's, ns (None: unlinked)

    @property
    def empty(self) -> bool:
        return not self.pairs


def skew_summary(items: Iterable[cpb.ClusterTelemetry], guests: Iterable[str] = ()) -> SkewSummary:
    """Per pair and per host realtime skew from the items' succeeded migrations (the last record
    of each migration counts once); `guests`: only their migrations."""
    wanted = frozenset(guests)
    finals: dict[str, cpb.Migration] = {}
    hosts: set[str] = set()
    for item in items:
        kind = item.WhichOneof("item")
        if kind == "node":
            hosts.add(item.node.node.node_id)
        elif kind == "migration":
            m = item.migration.migration
            if m.phase == cpb.MIGRATION_PHASE_SUCCEEDED and (not wanted or m.guest_id in wanted):
                finals[m.migration_id] = m
    by_pair: dict[tuple[str, str], list[cpb.Migration]] = defaultdict(list)
    for m in finals.values():
        by_pair[(m.source, m.destination)].append(m)
        hosts.update((m.source, m.destination))
    pairs = []
    for (source, destination), moves in sorted(by_pair.items()):
        skews = [m.realtime_skew_ns for m in moves]
        offset = [m for m in moves if m.method in OFFSET_METHODS]
        errors = [abs(m.counter_error_ticks) for m in offset if m.HasField("counter_error_ticks")]
        pairs.append(
            PairSkew(
                source,
                destination,
                len(moves),
                min(skews),
                max(skews),
                round(sum(skews) / len(skews)),
                len(offset),
                max(errors, default=None),
            )
        )
    reference, offsets = _host_offsets(pairs)
    return SkewSummary(pairs, reference, {h: offsets.get(h) for h in sorted(hosts)})


def _host_offsets(pairs: list[PairSkew]) -> tuple[str | None, dict[str, int]]:
    """Each linked host's realtime minus the reference's: breadth first from the reference,
    one pair's mean skew per step (a move the other way counts with the opposite sign)."""
    links: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for p in pairs:
        links[p.source].append((p.destination, p.skew_ns_mean))
        links[p.destination].append((p.source, -p.skew_ns_mean))
    if not links:
        return None, {}
    reference = min(links)
    offsets = {reference: 0}
    queue = deque([reference])
    while queue:
        host = queue.popleft()
        for other, skew in sorted(links[host]):
            if other not in offsets:
                offsets[other] = offsets[host] + skew
                queue.append(other)
    return reference, offsets
