"""Node health in the controller's pool: a host too busy to answer one check is not a dead host.

Edge cases: a node whose checks time out is marked down only after SLOW_CHECKS_TO_DOWN rounds in a
row (and listeners hear of it once); an answer in between resets the count; a refused or
NOT_SERVING answer marks it down at once; a node marked down comes back up on its next SERVING.
A failed call outside the health checks (a migration's) follows the same rule: refused
(UNAVAILABLE) marks the node down at once, timed out counts as one slow answer with the checks'
(a busy host stays up until the threshold), any other code changes nothing.
"""

from __future__ import annotations

from collections import deque
from typing import cast

import pytest

from controller.clients.node import Health, NodeClient
from controller.core.model import NodeId, NodeRecord
from controller.service.nodes import SLOW_CHECKS_TO_DOWN, NodePool
from node.core.features import ClockMode, HostFeatures


class ScriptedClient:
    """Answers health checks from a script."""

    def __init__(self, *answers: Health) -> None:
        self.answers = deque(answers)

    async def check_health(self, timeout_s: float = 1.0) -> Health:
        return self.answers.popleft()


def pool_with(node_id: str, client: ScriptedClient) -> tuple[NodePool, list[tuple[str, bool, str]]]:
    pool = NodePool()
    node = NodeId(node_id)
    pool.nodes[node] = NodeRecord(node, "127.0.0.1:1", HostFeatures(), ClockMode.SIMULATED)
    pool.clients[node] = cast(NodeClient, client)
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
