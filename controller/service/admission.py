"""Admission: waiting for a migration slot under KubeVirt's limits.

The counting and the order are controller.core.admission.SlotQueue's; this adapter parks
each waiting migration on a future and resolves it when the queue admits it (on a release,
a cancel or a change of limits), so a slot release costs O(log sources), never a scan.
"""

from __future__ import annotations

import asyncio

from controller.core.admission import Limits, SlotQueue
from controller.core.migration import MigrationRecord
from controller.core.model import MigrationId


class Admission:
    """Migration slots under `limits`; a cancel wakes its waiter."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.queue = SlotQueue(limits)
        self._waiters: dict[MigrationId, asyncio.Future[None]] = {}

    @property
    def limits(self) -> Limits:
        return self.queue.limits

    @limits.setter
    def limits(self, value: Limits) -> None:
        """Takes effect at once: raised limits start waiters now."""
        self._grant(self.queue.set_limits(value))

    async def acquire(self, record: MigrationRecord) -> None:
        """Wait until `record` holds a slot, or was asked to cancel (then it holds none).

        The slot is held until `release(record)`; a task cancelled while waiting leaves the queue.
        """
        mid = record.migration_id
        if record.cancel_requested:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[mid] = waiter
        self._grant(self.queue.request(mid, record.source))
        try:
            await waiter
        except asyncio.CancelledError:
            self.release(record)
            raise
        finally:
            self._waiters.pop(mid, None)

    def hold(self, record: MigrationRecord) -> None:
        """Count a migration that runs without having waited (a restarted controller finishing it)."""
        if not self.queue.holds(record.migration_id):
            self.queue.hold(record.migration_id, record.source)

    def release(self, record: MigrationRecord) -> None:
        """`record` ended (or stopped waiting): its slot goes to the next waiters."""
        self._grant(self.queue.release(record.migration_id))

    def cancel(self, record: MigrationRecord) -> None:
        """A cancel was requested: a waiting `record` stops waiting (it never got a slot)."""
        if self.queue.withdraw(record.migration_id):
            self._wake(record.migration_id)

    def _grant(self, admitted: list[MigrationId]) -> None:
        for mid in admitted:
            self._wake(mid)

    def _wake(self, mid: MigrationId) -> None:
        waiter = self._waiters.get(mid)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
