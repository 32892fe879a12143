"""Runs guest workloads on realtime hosts: one timer heap per process, no polling.

Every running VM's next guest timer interrupt is one entry of a heap ordered by the monotonic
instant it is due; a single event-loop timer (`loop.call_at`) is armed for the earliest
entry. When it fires, the due VMs take their interrupts (the guest handler re-arms) and are
planned again, each from its own vCPUs only. A VM whose guest waits for nothing (paused,
timers disabled) has no entry, and a host without such VMs costs nothing. Whatever can move a
deadline (resume, register and offset writes, loaded guest memory) arrives through the
servicer, which calls `kick_vm(host, vm)` to plan that VM again. One scheduler serves every
host of a fleet process (`kvmtimer fleet`), so the cost is per interrupt, not per host or vCPU.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

import structlog

from node.core.host import Host, VmId
from node.core.vm import Vm

log = structlog.get_logger("kvmtimer.node")


class TimerScheduler:
    """Delivers due guest timer interrupts of any number of realtime hosts (one per process)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Host, Vm]] = []  # (due loop time, tie-break, host, VM)
        self._due: dict[int, float] = {}  # id(vm) -> its live entry's due time
        self._seq = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._handle_at = float("inf")
        self.wakeups = 0  # timer callbacks run (benchmarks: idle cost)
        self.delivered = 0  # guest interrupts delivered by this scheduler

    @property
    def planned(self) -> int:
        """VMs with a guest interrupt ahead (an idle host plans none: no timer, no wake-up)."""
        return len(self._due)

    @property
    def armed(self) -> bool:
        """An event-loop timer is pending."""
        return self._handle is not None

    def kick_vm(self, host: Host, vm: Vm) -> None:
        """`vm` of `host` changed (its registers, offsets, run state): deliver what is due and
        plan it again; only that VM's plan can have moved. The others stay planned as they were; their due
        interrupts are delivered by their own wake-ups, not inside this VM's request (a
        migration's restore batch, inside the guest's downtime)."""
        self._plan(host, vm, asyncio.get_running_loop())
        self._arm()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle, self._handle_at = None, float("inf")
        self._heap.clear()
        self._due.clear()

    def _plan(self, host: Host, vm: Vm, loop: asyncio.AbstractEventLoop) -> None:
        if host.vms.get(VmId(vm.vm_id)) is not vm:  # destroyed (or replaced) since planned
            self._due.pop(id(vm), None)
            return
        try:
            self.delivered += host.run_vm_due_events(vm)
            ticks = vm.ticks_until_next_irq(host.counter.read())
        except Exception:
            log.exception("workload_driver_error", node_id=host.node_id, vm_id=vm.vm_id)
            ticks = None
        if ticks is None:
            self._due.pop(id(vm), None)
            return
        due = loop.time() + host.counter.ns_until(ticks) / 1e9
        self._due[id(vm)] = due
        heapq.heappush(self._heap, (due, next(self._seq), host, vm))

    def _arm(self) -> None:
        heap = self._heap
        while heap and self._due.get(id(heap[0][3])) != heap[0][0]:
            heapq.heappop(heap)  # stale: the VM was planned again, or has nothing ahead
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
        due_vms: list[tuple[Host, Vm]] = []
        while heap and heap[0][0] <= now:
            due, _, host, vm = heapq.heappop(heap)
            if self._due.get(id(vm)) == due:
                del self._due[id(vm)]
                due_vms.append((host, vm))
        for host, vm in due_vms:
            self._plan(host, vm, loop)
        self._arm()
