"""controller.service.admission.Admission: waiting for a migration slot on the event loop.

Edge cases: a migration that fits starts at once and one that does not waits; a release wakes
exactly the next waiter; a cancel wakes a waiting migration without giving it a slot (and does
nothing to a running one); raising the limits through the setter starts waiters at once; a task
cancelled while waiting leaves the queue; a record asked to cancel before it waits does not
queue; migrations held by a restarted controller count until released.
"""

from __future__ import annotations

import asyncio

import pytest

from controller.core.admission import Limits
from controller.core.migration import Method, MigrationRecord
from controller.core.model import GuestId, MigrationId, NodeId
from controller.service.admission import Admission


def record(mid: str, source: str) -> MigrationRecord:
    return MigrationRecord(MigrationId(mid), GuestId(f"g-{mid}"), NodeId(source), NodeId("dst"), Method.AUTO)


async def queued(adm: Admission, r: MigrationRecord) -> asyncio.Task[None]:
    """Start `r`'s acquire; it waits in the queue (or holds a slot) when this returns."""
    task = asyncio.create_task(adm.acquire(r))
    # One turn of the loop (a yield, not a timed wait): acquire asks the queue before it awaits.
    await asyncio.sleep(0)
    assert adm.queue.is_waiting(r.migration_id) or adm.queue.holds(r.migration_id)
    return task


@pytest.mark.asyncio
async def test_release_wakes_the_next_waiter() -> None:
    adm = Admission(Limits(parallel=1, outbound_per_node=1))
    a, b, c = record("a", "A"), record("b", "B"), record("c", "C")
    await adm.acquire(a)
    tb, tc = await queued(adm, b), await queued(adm, c)
    assert not tb.done() and not tc.done()
    adm.release(a)
    async with asyncio.timeout(5):
        await tb
    assert adm.queue.holds(b.migration_id) and not tc.done()
    adm.release(b)
    async with asyncio.timeout(5):
        await tc
    adm.release(c)
    assert adm.queue.live == 0


@pytest.mark.asyncio
async def test_cancel_wakes_a_waiter_without_a_slot() -> None:
    adm = Admission(Limits(parallel=1, outbound_per_node=1))
    a, b, c = record("a", "A"), record("b", "B"), record("c", "C")
    await adm.acquire(a)
    tb, tc = await queued(adm, b), await queued(adm, c)
    b.cancel_requested = True
    adm.cancel(b)
    async with asyncio.timeout(5):
        await tb
    assert not adm.queue.holds(b.migration_id) and adm.queue.live == 1
    adm.cancel(a)  # running: the executor stops it at a step boundary, admission keeps its slot
    assert adm.queue.holds(a.migration_id)
    adm.release(b)  # what the migration's task does when it ends: nothing to give back
    assert not tc.done()
    adm.release(a)
    async with asyncio.timeout(5):
        await tc


@pytest.mark.asyncio
async def test_raised_limits_start_waiters() -> None:
    adm = Admission(Limits(parallel=1, outbound_per_node=1))
    await adm.acquire(record("a", "A"))
    tasks = [await queued(adm, record(m, "A")) for m in ("b", "c")]
    adm.limits = Limits(parallel=3, outbound_per_node=3)
    async with asyncio.timeout(5):
        await asyncio.gather(*tasks)
    assert adm.queue.live == 3 and adm.limits == Limits(3, 3)


@pytest.mark.asyncio
async def test_cancelled_task_leaves_the_queue() -> None:
    adm = Admission(Limits(parallel=1, outbound_per_node=1))
    a, b, c = record("a", "A"), record("b", "B"), record("c", "C")
    await adm.acquire(a)
    tb, tc = await queued(adm, b), await queued(adm, c)
    tb.cancel()
    with pytest.raises(asyncio.CancelledError):
        await tb
    assert not adm.queue.is_waiting(b.migration_id)
    adm.release(a)
    async with asyncio.timeout(5):
        await tc
    assert adm.queue.holds(c.migration_id)


@pytest.mark.asyncio
async def test_cancel_requested_before_waiting_does_not_queue() -> None:
    adm = Admission(Limits(parallel=1, outbound_per_node=1))
    await adm.acquire(record("a", "A"))
    b = record("b", "B")
    b.cancel_requested = True
    async with asyncio.timeout(5):
        await adm.acquire(b)
    assert adm.queue.waiting == 0 and adm.queue.live == 1


@pytest.mark.asyncio
async def test_held_migrations_count_until_released() -> None:
    adm = Admission(Limits(parallel=1, outbound_per_node=1))
    held = record("r", "A")
    adm.hold(held)
    adm.hold(held)  # told twice: counted once
    tb = await queued(adm, record("b", "B"))
    assert adm.queue.live == 1 and not tb.done()
    adm.release(held)
    async with asyncio.timeout(5):
        await tb
