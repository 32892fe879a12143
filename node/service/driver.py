"""Runs guest workloads on a realtime node: sleeps until the next guest timer interrupt."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from node.core.host import Host

MAX_SLEEP_S = 0.05  # re-check at least this often (new VMs, changed offsets)
log = structlog.get_logger("kvmtimer.node")


class WorkloadDriver:
    """One task per realtime node delivering due guest timer interrupts."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def kick(self) -> None:
        """Something changed (resume, new workload): look again now."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"workload-driver-{self.host.node_id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                self.host.run_due_events()
                ticks = self.host.ticks_until_next_event()
            except Exception:
                log.exception("workload_driver_error", node_id=self.host.node_id)
                ticks = None
            sleep_s = (
                MAX_SLEEP_S if ticks is None else min(MAX_SLEEP_S, self.host.counter.ns_until(ticks) / 1e9)
            )
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=sleep_s)
