"""Node health in the controller's pool: a host too busy to answer one check is not a dead host.

Edge cases: a node whose checks time out is marked down only after SLOW_CHECKS_TO_DOWN rounds in a
row (and listeners hear of it once); an answer in between resets the count; a refused or
NOT_SERVING answer marks it down at once; a node marked down comes back up on its next SERVING;
a timeout in a round during which the controller's own event loop ran late is not held against the
node (neither counted nor clearing the count); the loop-lag monitor sees a loop held by a callback.
A failed call outside the health checks (a migration's) follows the same rule: refused
(UNAVAILABLE) marks the node down at once, timed out counts as one slow answer with the checks'
(a busy host stays up until the threshold), any other code changes nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import cast

import pytest

from controller.clients.node import Health, NodeClient
from controller.core.model import NodeId, NodeRecord
from controller.service.nodes import (
    CHECK_TIMEOUT_S,
    LATE_LOOP_FRACTION,
    SLOW_CHECKS_TO_DOWN,
    LoopLag,
    NodePool,
)
from node.core.features import ClockMode, HostFeatures
from tests.support.wait import until


class ScriptedClient:
    """Answers health checks from a script; `lags` (seconds, 0 = on time): how late the
    controller's loop ran during each check, as its lag monitor would report it."""

    def __init__(self, *answers: Health, lags: tuple[float, ...] = ()) -> None:
        self.answers = deque(answers)
        self.lags = deque(lags)
        self.pool: NodePool | None = None

    async def check_health(self, timeout_s: float = 1.0) -> Health:
        lag = self.lags.popleft() if self.lags else 0.0
        if lag and self.pool is not None:
            self.pool.loop_lag.note(lag)
        return self.answers.popleft()


def pool_with(node_id: str, client: ScriptedClient) -> tuple[NodePool, list[tuple[str, bool, str]]]:
    pool = NodePool()
    node = NodeId(node_id)
    pool.nodes[node] = NodeRecord(node, "127.0.0.1:1", HostFeatures(), ClockMode.SIMULATED)
    pool.clients[node] = cast(NodeClient, client)
    client.pool = pool
    heard: list[tuple[str, bool, str]] = []
    pool.on_health_changed.append(lambda n: heard.append((n.node_id, n.healthy, n.last_error)))
    return pool, heard


@pytest.mark.asyncio
async def test_slow_checks_mark_a_node_down_only_after_the_threshold() -> None:
    client = ScriptedClient(*[Health.SLOW] * (SLOW_CHECKS_TO_DOWN + 1))
    pool, heard = pool_with("n1", client)
    for _ in range(SLOW_CHECKS_TO_DOWN - 1):
        await pool.check_health()
        assert pool.nodes[NodeId("n1")].healthy and heard == []
    await pool.check_health()
    assert not pool.nodes[NodeId("n1")].healthy
    assert heard == [("n1", False, f"health check timed out; {SLOW_CHECKS_TO_DOWN} timeouts in a row")]
    await pool.check_health()  # still slow: no second event
    assert len(heard) == 1


@pytest.mark.asyncio
async def test_an_answer_resets_the_count_of_slow_checks() -> None:
    script = [Health.SLOW] * (SLOW_CHECKS_TO_DOWN - 1) + [Health.SERVING]
    script += [Health.SLOW] * (SLOW_CHECKS_TO_DOWN - 1)
    pool, heard = pool_with("n1", ScriptedClient(*script))
    for _ in script:
        await pool.check_health()
    assert pool.nodes[NodeId("n1")].healthy and heard == []


@pytest.mark.asyncio
async def test_a_refused_check_marks_the_node_down_at_once_and_serving_brings_it_back() -> None:
    pool, heard = pool_with("n1", ScriptedClient(Health.DOWN, Health.SERVING))
    await pool.check_health()
    assert heard == [("n1", False, "health check failed")]
    await pool.check_health()
    assert heard[-1] == ("n1", True, "") and pool.nodes[NodeId("n1")].healthy


@pytest.mark.asyncio
async def test_timeouts_while_our_loop_was_late_are_not_the_nodes_fault() -> None:
    late = LATE_LOOP_FRACTION * CHECK_TIMEOUT_S
    script = [Health.SLOW] * (SLOW_CHECKS_TO_DOWN + 3)
    # on time, late x3 (inconclusive), on time x(threshold - 1): down on the last one only
    lags = (0.0, late, late * 2, 5.0) + (0.0,) * (SLOW_CHECKS_TO_DOWN - 1)
    pool, heard = pool_with("n1", ScriptedClient(*script, lags=lags))
    for _ in range(SLOW_CHECKS_TO_DOWN + 2):
        await pool.check_health()
        assert pool.nodes[NodeId("n1")].healthy and heard == []
    assert pool.inconclusive_rounds == 3
    await pool.check_health()
    assert heard == [("n1", False, f"health check timed out; {SLOW_CHECKS_TO_DOWN} timeouts in a row")]


@pytest.mark.asyncio
async def test_a_late_loop_does_not_hide_a_refused_check() -> None:
    pool, heard = pool_with("n1", ScriptedClient(Health.DOWN, lags=(5.0,)))
    await pool.check_health()
    assert heard == [("n1", False, "health check failed")]


def hold_the_loop(seconds: float) -> None:
    """A callback that keeps the event loop busy (the load under test)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


@pytest.mark.asyncio
async def test_loop_lag_monitor_sees_a_blocked_loop() -> None:
    lag = LoopLag(interval_s=0.01)
    lag.start()
    try:
        asyncio.get_running_loop().call_soon(hold_the_loop, 0.3)
        await until(lambda: lag.worst_s >= 0.2, what="the held loop seen as lag")
        assert lag.take_max() >= 0.2 and lag.take_max() == 0.0
    finally:
        await lag.stop()


@pytest.mark.asyncio
async def test_a_timed_out_call_counts_as_a_slow_answer_a_refused_one_marks_down() -> None:
    node = NodeId("n1")
    pool, heard = pool_with("n1", ScriptedClient(*[Health.SLOW] * (SLOW_CHECKS_TO_DOWN - 2), Health.SERVING))
    pool.call_failed(node, "DEADLINE_EXCEEDED", "batch: deadline exceeded")
    pool.call_failed(node, "CANCELLED", "cancelled")
    assert pool.nodes[node].healthy and heard == []
    for _ in range(SLOW_CHECKS_TO_DOWN - 2):
        await pool.check_health()
    assert pool.nodes[node].healthy and heard == []  # one timeout short of the threshold
    pool.call_failed(node, "DEADLINE_EXCEEDED", "batch: deadline exceeded")
    assert heard == [
        ("n1", False, f"call timed out (batch: deadline exceeded); {SLOW_CHECKS_TO_DOWN} timeouts in a row")
    ]
    await pool.check_health()  # it answers: up again, and the count starts over
    assert pool.nodes[node].healthy and node not in pool.slow_checks
    pool.call_failed(node, "UNAVAILABLE", "connection refused")
    assert heard[-1] == ("n1", False, "connection refused")
