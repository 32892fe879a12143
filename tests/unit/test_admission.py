"""controller.core.admission.SlotQueue: KubeVirt's migration limits as counts and a FIFO.

Edge cases: the cluster-wide limit and the per-source outbound limit; a source at its outbound
limit does not block other sources' waiters behind it (no head-of-line blocking) and keeps its
place (no starvation: its oldest waiter goes first when its source frees a slot); a withdrawn
(cancelled) waiter, at the head of its source or behind it, is never admitted and frees nothing;
release of an unknown or already released id changes nothing; migrations held by a restarted
controller count even beyond the limits; limits raised at runtime admit waiters at once, in
order, lowered ones stop admissions until the counts fall below them; a duplicate request and
limits below 1 are refused. A model check compares every event with the reference rule (scan
the waiters oldest first, admit each that fits) over random event sequences.
"""

from __future__ import annotations

import random
from collections import deque

import pytest

from controller.core.admission import Limits, SlotQueue
from controller.core.errors import InvalidArgument
from controller.core.model import MigrationId, NodeId

M = MigrationId
N = NodeId


def test_cluster_limit_then_release_admits_next() -> None:
    q = SlotQueue(Limits(parallel=2, outbound_per_node=2))
    assert q.request(M("a"), N("n1")) == ["a"]
    assert q.request(M("b"), N("n2")) == ["b"]
    assert q.request(M("c"), N("n3")) == []
    assert (q.live, q.waiting) == (2, 1)
    assert q.release(M("a")) == ["c"]
    assert (q.live, q.waiting, q.holds(M("c"))) == (2, 0, True)


def test_outbound_limit_does_not_block_other_sources() -> None:
    q = SlotQueue(Limits(parallel=5, outbound_per_node=2))
    assert q.request(M("a1"), N("A")) == ["a1"]
    assert q.request(M("a2"), N("A")) == ["a2"]
    assert q.request(M("a3"), N("A")) == []  # A is at its limit
    assert q.request(M("b1"), N("B")) == ["b1"]  # behind a3, but from another source
    assert (q.outbound(N("A")), q.outbound(N("B")), q.live) == (2, 1, 3)
    assert q.release(M("b1")) == []  # a cluster slot, but A is still full
    assert q.release(M("a1")) == ["a3"]


def test_blocked_source_keeps_its_place() -> None:
    """No starvation: when A frees a slot its waiter goes before younger waiters of others."""
    q = SlotQueue(Limits(parallel=3, outbound_per_node=1))
    assert q.request(M("a1"), N("A")) == ["a1"]
    assert q.request(M("b1"), N("B")) == ["b1"]
    assert q.request(M("a2"), N("A")) == []
    assert q.request(M("c1"), N("C")) == ["c1"]  # the cluster is now full
    assert q.request(M("d1"), N("D")) == []
    assert q.request(M("e1"), N("E")) == []
    assert q.release(M("a1")) == ["a2"]  # oldest admissible waiter, ahead of d1 and e1
    assert q.release(M("b1")) == ["d1"]
    assert q.release(M("c1")) == ["e1"]


def test_busy_source_never_starves_under_a_stream_of_others() -> None:
    """Other sources' migrations flow past A's waiter while A is full; when A frees its slot,
    A's waiter goes first although younger waiters from other sources fit too."""
    q = SlotQueue(Limits(parallel=2, outbound_per_node=1))
    assert q.request(M("a1"), N("A")) == ["a1"]
    assert q.request(M("a2"), N("A")) == []
    assert q.request(M("x0"), N("X0")) == ["x0"]
    others = deque([M("x0")])
    for i in range(1, 10):
        assert q.request(M(f"x{i}"), N(f"X{i}")) == []
        assert q.release(others.popleft()) == [f"x{i}"]
        others.append(M(f"x{i}"))
    assert q.request(M("x10"), N("X10")) == []
    assert q.release(M("a1")) == ["a2"]
    assert q.release(others.popleft()) == ["x10"]


def test_withdrawn_waiter_is_never_admitted() -> None:
    q = SlotQueue(Limits(parallel=1, outbound_per_node=1))
    q.request(M("a"), N("A"))
    q.request(M("b"), N("B"))
    q.request(M("c"), N("B"))
    q.request(M("d"), N("D"))
    assert q.withdraw(M("b")) is True  # the head of B's waiters
    assert q.withdraw(M("d")) is True
    assert q.withdraw(M("d")) is False
    assert q.waiting == 1
    assert q.release(M("a")) == ["c"]
    assert q.release(M("c")) == []
    assert q.live == 0


def test_withdraw_behind_the_head() -> None:
    q = SlotQueue(Limits(parallel=1, outbound_per_node=1))
    q.request(M("a"), N("A"))
    q.request(M("b1"), N("B"))
    q.request(M("b2"), N("B"))
    q.request(M("b3"), N("B"))
    assert q.withdraw(M("b2"))
    assert q.release(M("a")) == ["b1"]
    assert q.release(M("b1")) == ["b3"]


def test_release_is_idempotent_and_unknown_ids_change_nothing() -> None:
    q = SlotQueue(Limits(parallel=1, outbound_per_node=1))
    q.request(M("a"), N("A"))
    q.request(M("b"), N("B"))
    assert q.release(M("zz")) == []
    assert q.release(M("a")) == ["b"]
    assert q.release(M("a")) == []
    assert (q.live, q.outbound(N("A")), q.outbound(N("B"))) == (1, 0, 1)


def test_release_of_a_waiter_withdraws_it() -> None:
    q = SlotQueue(Limits(parallel=1, outbound_per_node=1))
    q.request(M("a"), N("A"))
    q.request(M("b"), N("B"))
    assert q.release(M("b")) == []
    assert not q.is_waiting(M("b"))
    assert q.release(M("a")) == []


def test_held_migrations_count_beyond_the_limits() -> None:
    q = SlotQueue(Limits(parallel=2, outbound_per_node=2))
    for m in ("r1", "r2", "r3"):
        q.hold(M(m), N("A"))
    assert (q.live, q.outbound(N("A"))) == (3, 3)
    assert q.request(M("new"), N("B")) == []
    assert q.release(M("r1")) == []  # 2 live: still at the limit
    assert q.release(M("r2")) == ["new"]


def test_raised_limits_admit_waiters_in_order() -> None:
    q = SlotQueue(Limits(parallel=1, outbound_per_node=1))
    q.request(M("a1"), N("A"))
    for m, n in (("a2", "A"), ("b1", "B"), ("c1", "C"), ("a3", "A")):
        assert q.request(M(m), N(n)) == []
    assert q.set_limits(Limits(parallel=4, outbound_per_node=2)) == ["a2", "b1", "c1"]
    assert q.set_limits(Limits(parallel=10, outbound_per_node=3)) == ["a3"]
    assert q.limits == Limits(10, 3)


def test_lowered_limits_stop_admissions_until_below() -> None:
    q = SlotQueue(Limits(parallel=4, outbound_per_node=4))
    for m in ("a1", "a2", "a3"):
        q.request(M(m), N("A"))
    assert q.set_limits(Limits(parallel=2, outbound_per_node=1)) == []
    assert q.request(M("b1"), N("B")) == []  # 3 live, limit 2
    assert q.request(M("a4"), N("A")) == []
    assert q.release(M("a1")) == []  # 2 live
    assert q.release(M("a2")) == ["b1"]  # 1 live; A still has 1 outbound, its limit
    assert q.release(M("a3")) == ["a4"]


def test_duplicate_request_and_bad_limits_are_refused() -> None:
    q = SlotQueue(Limits(parallel=1, outbound_per_node=1))
    q.request(M("a"), N("A"))
    q.request(M("b"), N("B"))
    with pytest.raises(InvalidArgument):
        q.request(M("a"), N("A"))
    with pytest.raises(InvalidArgument):
        q.request(M("b"), N("B"))
    with pytest.raises(InvalidArgument):
        q.hold(M("a"), N("A"))
    assert (q.live, q.waiting) == (1, 1)
    for parallel, outbound in ((0, 1), (1, 0), (-1, 2)):
        with pytest.raises(InvalidArgument):
            Limits(parallel, outbound)


class Reference:
    """The rule by definition: after each event, scan the waiters oldest first, admit each that fits."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.held: dict[str, str] = {}
        self.waiting: list[tuple[str, str]] = []

    def admit(self) -> list[str]:
        admitted = []
        for mid, src in list(self.waiting):
            out = sum(1 for s in self.held.values() if s == src)
            if len(self.held) < self.limits.parallel and out < self.limits.outbound_per_node:
                self.waiting.remove((mid, src))
                self.held[mid] = src
                admitted.append(mid)
        return admitted


@pytest.mark.parametrize("seed", range(40))
def test_matches_the_reference_rule(seed: int) -> None:
    rng = random.Random(seed)
    limits = Limits(rng.randint(1, 6), rng.randint(1, 3))
    q, ref = SlotQueue(limits), Reference(limits)
    sources = [f"n{i}" for i in range(rng.randint(1, 6))]
    next_id = 0
    for _ in range(400):
        event = rng.random()
        if event < 0.45:
            mid, src = f"m{next_id}", rng.choice(sources)
            next_id += 1
            ref.waiting.append((mid, src))
            assert q.request(M(mid), N(src)) == ref.admit()
        elif event < 0.8 and ref.held:
            mid = rng.choice(sorted(ref.held))
            del ref.held[mid]
            assert q.release(M(mid)) == ref.admit()
        elif event < 0.9 and ref.waiting:
            mid, src = rng.choice(ref.waiting)
            ref.waiting.remove((mid, src))
            assert q.withdraw(M(mid))
            assert ref.admit() == []
        elif event < 0.95:
            mid, src = f"h{next_id}", rng.choice(sources)
            next_id += 1
            ref.held[mid] = src
            q.hold(M(mid), N(src))
        else:
            new = Limits(rng.randint(1, 6), rng.randint(1, 3))
            ref.limits = new
            assert q.set_limits(new) == ref.admit()
        assert q.live == len(ref.held)
        assert q.waiting == len(ref.waiting)
        for src in sources:
            assert q.outbound(N(src)) == sum(1 for s in ref.held.values() if s == src)
