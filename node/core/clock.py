"""Clocks and the host counter.

The core never reads the system time itself: a `Clock` is injected. Tests use
`ManualClock` (exact, deterministic); a realtime node uses `SystemClock`.
The host counter (what `kvm_phys_timer_read()` returns) is derived from the
clock's monotonic time, scaled to CNTFRQ from the host's boot-time base.
"""

from __future__ import annotations

import time
from typing import Protocol

from node.core.errors import InvalidArgument, WrongClockMode

NS_PER_S = 1_000_000_000
U64_MASK = (1 << 64) - 1
SAMPLE_TRIES = 4  # attempts at a tight (counter, realtime) pair
SAMPLE_GOOD_GAP_NS = 2_000  # a pair read within 2 us is good enough


def u64(value: int) -> int:
    """Wrap to an unsigned 64-bit value (all counter arithmetic wraps)."""
    return value & U64_MASK


def ticks_to_ns(ticks: int, cntfrq_hz: int) -> int:
    """Whole nanoseconds spanned by `ticks` at `cntfrq_hz` (floor)."""
    return ticks * NS_PER_S // cntfrq_hz


def ns_to_ticks(ns: int, cntfrq_hz: int) -> int:
    """Whole counter ticks in `ns` nanoseconds at `cntfrq_hz` (floor)."""
    return ns * cntfrq_hz // NS_PER_S


class Clock(Protocol):
    """Time source: a monotonic clock and CLOCK_REALTIME, both in ns."""

    def monotonic_ns(self) -> int: ...

    def realtime_ns(self) -> int: ...


class SystemClock:
    """The machine's clocks."""

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()

    def realtime_ns(self) -> int:
        return time.time_ns()


class ManualClock:
    """A clock that moves only when told. Realtime = monotonic + a fixed epoch offset."""

    __slots__ = ("_mono_ns", "_realtime_offset_ns")

    def __init__(self, start_ns: int = 0, realtime_offset_ns: int = 1_700_000_000 * NS_PER_S) -> None:
        self._mono_ns = start_ns
        self._realtime_offset_ns = realtime_offset_ns

    def monotonic_ns(self) -> int:
        return self._mono_ns

    def realtime_ns(self) -> int:
        return self._mono_ns + self._realtime_offset_ns

    def advance_ns(self, delta_ns: int) -> None:
        """Move time forward by `delta_ns` (>= 0)."""
        if delta_ns < 0:
            raise InvalidArgument(f"time cannot go backwards (delta {delta_ns} ns)")
        self._mono_ns += delta_ns

    def advance_to_ns(self, target_ns: int) -> None:
        """Move time forward to `target_ns`; a target in the past is a no-op."""
        self._mono_ns = max(self._mono_ns, target_ns)

    def set_realtime_offset_ns(self, offset_ns: int) -> None:
        """Skew this clock's realtime against its monotonic time (clock-skew tests)."""
        self._realtime_offset_ns = offset_ns


class HostCounter:
    """The host's physical counter H: `base + elapsed_ns * cntfrq / 1e9`, wrapped to u64.

    Each emulated host boots at a different time, so `base_ticks` differs per host.
    """

    __slots__ = ("_base", "_boot_ns", "_clock", "cntfrq_hz")

    def __init__(self, clock: Clock, cntfrq_hz: int, base_ticks: int = 0) -> None:
        self._clock = clock
        self.cntfrq_hz = cntfrq_hz
        self._base = u64(base_ticks)
        self._boot_ns = clock.monotonic_ns()

    @property
    def clock(self) -> Clock:
        return self._clock

    def elapsed_ticks(self) -> int:
        """Ticks since boot, unwrapped."""
        return (self._clock.monotonic_ns() - self._boot_ns) * self.cntfrq_hz // NS_PER_S

    def read(self) -> int:
        """Current host counter value."""
        return (self._base + self.elapsed_ticks()) & U64_MASK

    def sample(self) -> tuple[int, int]:
        """(host counter, CLOCK_REALTIME ns), taken together.

        The two clocks are read separately, so a preemption between the reads would skew
        the pair (and every offset computed from it): realtime is read on both sides of
        the counter and the tightest of a few tries is kept, with its midpoint.
        """
        clock = self._clock
        best_gap = best_mono = best_rt = -1
        for _ in range(SAMPLE_TRIES):
            before = clock.realtime_ns()
            mono = clock.monotonic_ns()
            after = clock.realtime_ns()
            gap = after - before
            if best_gap < 0 or gap < best_gap:
                best_gap, best_mono, best_rt = gap, mono, before + gap // 2
            if gap <= SAMPLE_GOOD_GAP_NS:
                break
        elapsed = (best_mono - self._boot_ns) * self.cntfrq_hz // NS_PER_S
        return (self._base + elapsed) & U64_MASK, best_rt

    def ns_until(self, ticks_ahead: int) -> int:
        """Nanoseconds until the counter has advanced by `ticks_ahead` from now (ceil)."""
        elapsed = self.elapsed_ticks()
        target_ns = self._boot_ns + -(-(elapsed + ticks_ahead) * NS_PER_S // self.cntfrq_hz)
        return max(0, target_ns - self._clock.monotonic_ns())

    def step(self, delta_ticks: int) -> int:
        """Advance a simulated host by exactly `delta_ticks` ticks; returns the new value.

        Moves the clock to the first nanosecond at which the counter shows the new
        value, so the step is exact for any cntfrq <= 1 GHz.
        """
        if not isinstance(self._clock, ManualClock):
            raise WrongClockMode("the host counter can only be stepped in simulated clock mode")
        if delta_ticks < 0:
            raise InvalidArgument(f"delta_ticks must be >= 0, got {delta_ticks}")
        self._clock.advance_ns(self.ns_until(delta_ticks))
        return self.read()
