"""controller.core.placement: the per-node load index and the placement policy.

Edge cases: a guest counted where it is now after moves (and not twice when updated again);
lost guests weigh nothing and are listed on their node; a resized or forgotten guest; creating
guests count; the index equals `node_load` recomputed over random histories; placement picks
the least loaded healthy node, ties by node id, honours exclusions and the counter frequency,
and refuses when no node fits.
"""

from __future__ import annotations

import random

import pytest

from controller.core.errors import FailedPrecondition
from controller.core.model import GuestId, GuestRecord, GuestState, NodeId, NodeRecord, node_load
from controller.core.placement import NodeLoads, place
from node.core.features import ClockMode, HostFeatures
from node.core.workload import WorkloadSpec

N = NodeId


def guest(gid: str, node: str, vcpus: int, state: GuestState = GuestState.RUNNING) -> GuestRecord:
    return GuestRecord(GuestId(gid), N(node), f"{gid}@1", vcpus, WorkloadSpec(period_ticks=100), state=state)


def node(nid: str, *, healthy: bool = True, cntfrq_hz: int = 25_000_000) -> NodeRecord:
    return NodeRecord(N(nid), "127.0.0.1:1", HostFeatures(cntfrq_hz=cntfrq_hz), ClockMode.SIMULATED, healthy)


def test_moves_lost_and_removed_guests() -> None:
    loads = NodeLoads()
    g = guest("g", "a", 3)
    loads.update(g)
    loads.update(g)  # idempotent
    assert (loads.guests(N("a")), loads.vcpus(N("a"))) == (1, 3)
    g.node_id = N("b")
    loads.update(g)
    assert (loads.vcpus(N("a")), loads.vcpus(N("b")), loads.guests(N("b"))) == (0, 3, 1)
    g.state = GuestState.LOST
    loads.update(g)
    assert (loads.vcpus(N("b")), loads.guests(N("b")), loads.lost(N("b"))) == (0, 0, ["g"])
    loads.remove(g.guest_id)
    loads.remove(g.guest_id)  # already gone
    assert loads.lost(N("b")) == [] and loads.vcpus(N("b")) == 0
    c = guest("c", "a", 2, GuestState.CREATING)
    loads.update(c)
    assert loads.vcpus(N("a")) == 2


@pytest.mark.parametrize("seed", range(20))
def test_index_equals_the_recomputed_load(seed: int) -> None:
    rng = random.Random(seed)
    nodes = [N(f"n{i}") for i in range(4)]
    guests: dict[str, GuestRecord] = {}
    loads = NodeLoads()
    for step in range(300):
        op = rng.random()
        if op < 0.3 or not guests:
            g = guest(f"g{step}", rng.choice(nodes), rng.randint(1, 4), GuestState.CREATING)
            guests[g.guest_id] = g
        elif op < 0.85:
            g = guests[rng.choice(sorted(guests))]
            g.node_id = rng.choice(nodes)
            g.state = rng.choice([GuestState.RUNNING, GuestState.RUNNING, GuestState.LOST])
        else:
            g = guests.pop(rng.choice(sorted(guests)))
            loads.remove(g.guest_id)
            continue
        loads.update(g)
        for n in nodes:
            live = [x for x in guests.values() if x.node_id == n and x.state.alive]
            assert loads.vcpus(n) == node_load(n, list(guests.values()))
            assert loads.guests(n) == len(live)
            assert loads.lost(n) == sorted(
                x.guest_id for x in guests.values() if x.node_id == n and x.state is GuestState.LOST
            )


def test_place_least_loaded_ties_exclusions_frequency() -> None:
    nodes = [node("c"), node("b"), node("a", healthy=False), node("d", cntfrq_hz=1_000_000_000)]
    load = {N("b"): 4, N("c"): 2, N("d"): 0}.__getitem__
    assert place(nodes, load).node_id == "d"
    assert place(nodes, load, cntfrq_hz=25_000_000).node_id == "c"
    assert place(nodes, load, exclude=frozenset({N("c"), N("d")})).node_id == "b"
    tie = {N("b"): 1, N("c"): 1, N("d"): 1}.__getitem__
    assert place(nodes, tie).node_id == "b"
    with pytest.raises(FailedPrecondition, match="no healthy node with a 7 Hz counter"):
        place(nodes, load, cntfrq_hz=7)
