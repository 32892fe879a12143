"""Runs guest workloads on realtime hosts: one timer heap per process, no polling.

Every host's next guest timer interrupt is one entry of a heap ordered by the monotonic
instant it is due; a single event-loop timer (`loop.call_at`) is armed for the earliest
entry. When it fires, the due hosts deliver their interrupts (the guest handler re-arms)
and are planned again. A host whose guests wait for nothing (no VM running, timers
disabled) has no entry at all: an idle host costs nothing. Whatever can move a deadline
(resume, register and offset writes, loaded guest memory) arrives through the servicer,
which calls `kick(host)` to plan that host again. One scheduler serves every host of a
fleet process (`kvmtimer fleet`), so the cost is per interrupt, not per host or per vCPU.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

import structlog

from node.core.host import Host

log = structlog.get_logger("kvmtimer.node")


class TimerScheduler:
    """Delivers due guest timer interrupts of any number of realtime hosts (one per process)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Host]] = []  # (due loop time, tie-break, host)
        self._due: dict[int, float] = {}  # id(host) -> its live entry's due time
        self._seq = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._handle_at = float("inf")
        self.wakeups = 0  # timer callbacks run (benchmarks: idle cost)
        self.delivered = 0  # guest interrupts delivered by this scheduler

    def kick(self, host: Host) -> None:
        """Something of `host` changed (resume, new workload, offsets): deliver what is due and
        plan its next interrupt again."""
        self._plan(host, asyncio.get_running_loop())
        self._arm()

    @property
    def planned(self) -> int:
        """Hosts with a guest interrupt ahead (an idle host is not planned: no timer, no wake-up)."""
        return len(self._due)

    @property
    def armed(self) -> bool:
        """An event-loop timer is pending."""
        return self._handle is not None

    def forget(self, host: Host) -> None:
        """The host stops: its entry is dropped (lazily, from the heap)."""
        self._due.pop(id(host), None)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle, self._handle_at = None, float("inf")
        self._heap.clear()
        self._due.clear()

    def _plan(self, host: Host, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self.delivered += host.run_due_events()
            ticks = host.ticks_until_next_event()
        except Exception:
            log.exception("workload_driver_error", node_id=host.node_id)
            ticks = None
        if ticks is None:
            self._due.pop(id(host), None)
            return
        due = loop.time() + host.counter.ns_until(ticks) / 1e9
        self._due[id(host)] = due
        heapq.heappush(self._heap, (due, next(self._seq), host))

    def _arm(self) -> None:
        heap = self._heap
        while heap and self._due.get(id(heap[0][2])) != heap[0][0]:
            heapq.heappop(heap)  # stale: the host was planned again or forgotten
        if not heap:
            return
        earliest = heap[0][0]
        if self._handle is not None:
            if self._handle_at <= earliest:
                return
            self._handle.cancel()
        self._handle_at = earliest
        self._handle = asyncio.get_running_loop().call_at(earliest, self._fire)

    def _fire(self) -> None:
        self._handle, self._handle_at = None, float("inf")
        self.wakeups += 1
        loop = asyncio.get_running_loop()
        now = loop.time()
        heap = self._heap
        due_hosts: list[Host] = []
        while heap and heap[0][0] <= now:
            due, _, host = heapq.heappop(heap)
            if self._due.get(id(host)) == due:
                del self._due[id(host)]
                due_hosts.append(host)
        for host in due_hosts:
            self._plan(host, loop)
        self._arm()
