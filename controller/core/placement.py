"""Placement policy: spread guests by load over healthy nodes."""

from __future__ import annotations

from collections.abc import Iterable

from controller.core.errors import FailedPrecondition
from controller.core.model import GuestRecord, NodeId, NodeRecord, node_load


def place(
    nodes: Iterable[NodeRecord],
    guests: list[GuestRecord],
    *,
    exclude: frozenset[NodeId] = frozenset(),
    cntfrq_hz: int | None = None,
) -> NodeRecord:
    """Least-loaded healthy node (ties: by node id), optionally with a given counter frequency."""
    candidates = [
        n
        for n in nodes
        if n.healthy and n.node_id not in exclude and (cntfrq_hz is None or n.features.cntfrq_hz == cntfrq_hz)
    ]
    if not candidates:
        freq = f" with a {cntfrq_hz} Hz counter" if cntfrq_hz is not None else ""
        raise FailedPrecondition(f"no healthy node{freq} available")
    return min(candidates, key=lambda n: (node_load(n.node_id, guests), n.node_id))
