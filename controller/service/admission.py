"""Admission: how many migrations may run at once (KubeVirt's limits), and waiting for a slot."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from controller.core.migration import Limits, MigrationRecord


class Admission:
    """Migration slots under `limits`; a cancel wakes the waiters."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._slots = asyncio.Condition()

    async def acquire(
        self, record: MigrationRecord, records: Callable[[], Iterable[MigrationRecord]]
    ) -> None:
        """Wait until `record` may start (or was asked to cancel)."""
        async with self._slots:
            await self._slots.wait_for(
                lambda: (
                    record.cancel_requested
                    or self.limits.can_start(record.source, [m for m in records() if m is not record])
                )
            )

    async def wake(self) -> None:
        """A slot was released or a cancel requested: re-check every waiter."""
        async with self._slots:
            self._slots.notify_all()
