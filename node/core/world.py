"""Several simulated hosts sharing one ManualClock: time moves for all of them at once.

Advancing the shared clock event by event delivers every guest's timer
interrupts at the exact host counter value at which they fire, on every host.
"""

from __future__ import annotations

from collections.abc import Sequence

from node.core.clock import ManualClock
from node.core.host import Host


def advance_hosts(hosts: Sequence[Host], clock: ManualClock, delta_ns: int) -> int:
    """Move the shared clock forward by `delta_ns`, delivering due interrupts in time order.

    Returns how many guest interrupts were taken.
    """
    target = clock.monotonic_ns() + delta_ns
    taken = 0
    while True:
        taken += sum(h.run_due_events() for h in hosts)
        waits = [h.counter.ns_until(t) for h in hosts if (t := h.ticks_until_next_event()) is not None]
        next_ns = min(waits, default=None)
        if next_ns is None or clock.monotonic_ns() + next_ns > target:
            break
        clock.advance_ns(max(next_ns, 1))
    clock.advance_to_ns(target)
    return taken + sum(h.run_due_events() for h in hosts)
