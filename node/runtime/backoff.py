"""Exponential back-off between retries: every reconnect and re-register loop uses it.

The delay starts at `initial_s`, doubles after each failure up to `max_s`, and goes back to
`initial_s` on `reset()` (after a success). `jitter` spreads the delays by ±that fraction so
many clients that lost the same server do not come back in lock-step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    """Delays of one retry loop (a live object: one per loop)."""

    initial_s: float  # first delay, and the delay after reset()
    max_s: float  # bound of the doubling
    jitter: float = 0.0  # each delay is scaled by a uniform factor in 1 ± jitter
    current_s: float = field(init=False)  # the delay next_s() returns next (before jitter)

    def __post_init__(self) -> None:
        self.current_s = self.initial_s

    def next_s(self) -> float:
        """The delay to wait now; the following one doubles (up to max_s)."""
        delay = self.current_s
        self.current_s = min(delay * 2, self.max_s)
        return delay * random.uniform(1 - self.jitter, 1 + self.jitter) if self.jitter else delay

    def reset(self) -> None:
        """A success: the next failure waits `initial_s` again."""
        self.current_s = self.initial_s
