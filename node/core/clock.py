"""Clocks and the host counter.

The core never reads the system time itself: a `Clock` is injected. Tests use
`ManualClock` (exact, deterministic); a realtime node uses `SystemClock`.

One read per instant. Everything time-related on a host is derived from one
`Clock.instant_ns()` read: the host counter H and the host's realtime RT of a sample
come from the same instant by construction, so no scheduling delay can come between
them (spec §4.4 "anchor not atomic"). The instant has two parts:

* `realtime_ns`: the machine's CLOCK_REALTIME. All processes on one machine read the
  same system-wide clock, so two nodes agree on realtime exactly (not up to the jitter
  of a per-process anchor), and nodes on different machines agree as well as NTP makes
  their clocks agree: the offset method's error is then only what the clocks differ by.
* `timeline_ns`: the same read with every step of the system's realtime since the
  clock was created taken out. The host counter runs on it, so it keeps running at
  CNTFRQ through an NTP step or `date -s` (a real counter does not jump with the
  wall clock) and never runs backwards.

The host counter ticks on the absolute grid of that timeline,
H = base + ⌊t·f/1e9⌋ − ⌊t_boot·f/1e9⌋, so hosts of one machine tick together and
differences of floors telescope: crediting ⌊RT_d·f⌋ − ⌊RT_s·f⌋ across a migration
adds no rounding of its own (at most the one tick of the final observation).

Deliberate clock effects (`ClockEffects`: skew, drift, steps) move only one host's
idea of realtime (`HostCounter.sample`), never its counter and never the machine's
realtime (`HostCounter.reference_sample`, what an outside observer of the guest uses).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from node.core.errors import InvalidArgument, WrongClockMode

NS_PER_S = 1_000_000_000
U64_MASK = (1 << 64) - 1
INT64_MAX = (1 << 63) - 1
PPB_PER_PPM = 1_000
# Deliberate effects are bounded so every host realtime stays a plain int64 for centuries.
MAX_SKEW_NS = 1_000_000 * NS_PER_S  # ~11.6 days, either way
MAX_DRIFT_PPM = 100_000.0  # 10 %: far beyond any real oscillator, still a forward clock
# System realtime step detection (SystemClock).
BRACKET_TRIES = 16  # reads taken to pin down CLOCK_REALTIME - CLOCK_MONOTONIC
STEP_SLACK_NS = 2_000  # a realtime-monotonic gap this far below its bound triggers a check


def u64(value: int) -> int:
    """Wrap to an unsigned 64-bit value (all counter arithmetic wraps)."""
    return value & U64_MASK


def ticks_to_ns(ticks: int, cntfrq_hz: int) -> int:
    """Whole nanoseconds spanned by `ticks` at `cntfrq_hz` (floor)."""
    return ticks * NS_PER_S // cntfrq_hz


def ns_to_ticks(ns: int, cntfrq_hz: int) -> int:
    """Whole counter ticks in `ns` nanoseconds at `cntfrq_hz` (floor)."""
    return ns * cntfrq_hz // NS_PER_S


def ticks_between(start_ns: int, end_ns: int, cntfrq_hz: int) -> int:
    """Tick boundaries a counter at `cntfrq_hz` crosses from `start_ns` to `end_ns`.

    ⌊end·f/1e9⌋ − ⌊start·f/1e9⌋: differs from ⌊(end − start)·f/1e9⌋ by at most one tick
    and equals it whenever the span is a whole number of ticks; unlike it, sums of
    consecutive spans telescope (no rounding accumulates).
    """
    return ns_to_ticks(end_ns, cntfrq_hz) - ns_to_ticks(start_ns, cntfrq_hz)


class Clock(Protocol):
    """Time source. `instant_ns` is the one read everything else derives from."""

    def instant_ns(self) -> tuple[int, int]:
        """(timeline ns, realtime ns) of one instant: the timeline is CLOCK_REALTIME without
        the system's realtime steps since the clock was created (monotonic, never steps)."""
        ...

    def monotonic_ns(self) -> int: ...

    def realtime_ns(self) -> int: ...


class SystemClock:
    """The machine's CLOCK_REALTIME, read once per instant, with its steps taken out of the timeline.

    Why CLOCK_REALTIME and not CLOCK_MONOTONIC: realtime is what §4.2 transfers between
    hosts and what every process of the machine reads identically. A monotonic read would
    need a per-process monotonic->realtime anchor, and two anchors taken by two processes
    differ by their sampling jitter (tens of ns to ms under load), which is exactly the
    emulator-made error this clock exists to avoid (at 1 GHz every ns is a tick).

    Steps of the system's realtime (NTP step, `date -s`, a leap second) are detected from
    CLOCK_REALTIME - CLOCK_MONOTONIC, which the kernel only changes on a step (NTP slews
    both clocks alike). Each instant also reads CLOCK_MONOTONIC right after realtime, so
    `rt - mono` is never above the true gap; bounds [lo, hi] on the gap come from
    bracketed reads (mono, rt, mono). A gap above `hi` proves a forward step; a gap well
    below `lo` is either a preemption between the two reads or a backward step, told apart
    by a fresh bracket. A detected step moves `steps_ns` by the change of the gap (to within
    the bracket widths, ~100 ns, once per step), so the timeline continues smoothly. A
    backward step too small to prove (< STEP_SLACK_NS) can only hold the timeline still
    for that long: the timeline never runs backwards.
    """

    __slots__ = ("_hi", "_last_timeline", "_lo", "_monotonic", "_realtime", "steps_ns")

    def __init__(
        self,
        realtime: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._realtime = realtime
        self._monotonic = monotonic
        self.steps_ns = 0  # system realtime steps taken out of the timeline so far
        self._lo, self._hi = self._bracket()
        self._last_timeline: int | None = None

    def monotonic_ns(self) -> int:
        return self._monotonic()

    def realtime_ns(self) -> int:
        return self._realtime()

    def _bracket(self) -> tuple[int, int]:
        """Bounds on CLOCK_REALTIME - CLOCK_MONOTONIC from reads (mono, rt, mono)."""
        lo = hi = None
        for _ in range(BRACKET_TRIES):
            before = self._monotonic()
            rt = self._realtime()
            after = self._monotonic()
            lo = rt - after if lo is None else max(lo, rt - after)
            hi = rt - before if hi is None else min(hi, rt - before)
            if lo > hi:  # the clock stepped while bracketing: start over from this read
                lo, hi = rt - after, rt - before
        assert lo is not None and hi is not None
        return lo, hi

    def _rebase(self, lo: int, hi: int) -> None:
        """The gap moved from [self._lo, self._hi] to [lo, hi]: take the step out of the timeline."""
        self.steps_ns += (lo + hi) // 2 - (self._lo + self._hi) // 2
        self._lo, self._hi = lo, hi

    def instant_ns(self) -> tuple[int, int]:
        rt = self._realtime()
        gap = rt - self._monotonic()  # <= the true gap (monotonic read second)
        if gap > self._hi:
            self._rebase(*self._bracket())  # proven forward step
        elif gap < self._lo - STEP_SLACK_NS:
            lo, hi = self._bracket()
            if hi < self._lo:  # proven backward step (else: preempted between the reads)
                self._rebase(lo, hi)
        elif gap > self._lo:
            self._lo = gap
        timeline = rt - self.steps_ns
        last = self._last_timeline
        if last is not None and timeline < last:
            timeline = last  # a step too small to prove yet: hold still, never go back
        self._last_timeline = timeline
        return timeline, rt


class ManualClock:
    """A clock that moves only when told. Realtime = monotonic + an epoch offset.

    The timeline is monotonic + the epoch offset given at creation: changing the realtime
    offset later (`set_realtime_offset_ns`) is a step of the machine's realtime, which the
    host counters do not follow (as with SystemClock).
    """

    __slots__ = ("_epoch_ns", "_mono_ns", "_realtime_offset_ns")

    def __init__(self, start_ns: int = 0, realtime_offset_ns: int = 1_700_000_000 * NS_PER_S) -> None:
        self._mono_ns = start_ns
        self._realtime_offset_ns = realtime_offset_ns
        self._epoch_ns = realtime_offset_ns

    def monotonic_ns(self) -> int:
        return self._mono_ns

    def realtime_ns(self) -> int:
        return self._mono_ns + self._realtime_offset_ns

    def instant_ns(self) -> tuple[int, int]:
        return self._mono_ns + self._epoch_ns, self._mono_ns + self._realtime_offset_ns

    def advance_ns(self, delta_ns: int) -> None:
        """Move time forward by `delta_ns` (>= 0)."""
        if delta_ns < 0:
            raise InvalidArgument(f"time cannot go backwards (delta {delta_ns} ns)")
        self._mono_ns += delta_ns

    def advance_to_ns(self, target_ns: int) -> None:
        """Move time forward to `target_ns`; a target in the past is a no-op."""
        self._mono_ns = max(self._mono_ns, target_ns)

    def set_realtime_offset_ns(self, offset_ns: int) -> None:
        """Step the machine's realtime (every host on this clock sees it; counters do not)."""
        self._realtime_offset_ns = offset_ns


@dataclass(frozen=True, slots=True)
class ClockEffects:
    """Deliberate errors of one host's realtime clock (settings). The host counter is unaffected."""

    skew_ns: int = 0  # constant offset from the machine's realtime
    drift_ppm: float = 0.0  # rate error: the host's realtime gains this many µs per second
    step_ns: int = 0  # one NTP-like jump of the host's realtime (forward or back)...
    step_after_ns: int = 0  # ...this long after the host booted (on its timeline)

    def __post_init__(self) -> None:
        check_skew(self.skew_ns, "skew_ns")
        check_skew(self.step_ns, "step_ns")
        check_drift(self.drift_ppm)
        if not 0 <= self.step_after_ns <= INT64_MAX:
            raise InvalidArgument(f"step_after_ns must be 0..{INT64_MAX}, got {self.step_after_ns}")


def check_skew(value: int, what: str) -> int:
    if not -MAX_SKEW_NS <= value <= MAX_SKEW_NS:
        raise InvalidArgument(f"{what} must be within ±{MAX_SKEW_NS} ns, got {value}")
    return value


def check_drift(ppm: float) -> float:
    if not -MAX_DRIFT_PPM <= ppm <= MAX_DRIFT_PPM:  # also refuses NaN
        raise InvalidArgument(f"drift must be within ±{MAX_DRIFT_PPM:g} ppm, got {ppm}")
    return ppm


@dataclass(frozen=True, slots=True)
class RealtimeState:
    """A host's realtime clock effects as of one instant (for RPCs and metrics)."""

    skew_ns: int  # configured constant skew
    drift_ppm: float  # configured drift rate
    drift_ns: int  # realtime gained (or lost) by drift so far
    stepped_ns: int  # sum of the steps taken so far
    offset_ns: int  # the host's realtime minus the machine's, now (skew + drift + steps)


class HostRealtime:
    """One host's idea of realtime: the machine's realtime plus skew, drift and steps.

    Pure and exact: a function of the timeline (integer ns), so simulated hosts apply the
    same effects deterministically. Drift accrues on the timeline from the moment it is set
    (⌊Δt·ppb/1e9⌋, folded in exactly when the rate changes); steps take effect at a timeline
    instant (settings: boot + step_after_ns; runtime: now).
    """

    __slots__ = ("_drift_folded_ns", "_drift_ppb", "_drift_since", "_steps", "drift_ppm", "skew_ns")

    def __init__(self, effects: ClockEffects, boot_timeline_ns: int) -> None:
        self.skew_ns = effects.skew_ns
        self.drift_ppm = effects.drift_ppm
        self._drift_ppb = round(effects.drift_ppm * PPB_PER_PPM)
        self._drift_since = boot_timeline_ns
        self._drift_folded_ns = 0
        # (timeline instant, jump); the first entry folds every step already taken.
        self._steps: list[tuple[int, int]] = [(boot_timeline_ns, 0)]
        if effects.step_ns:
            self._steps.append((boot_timeline_ns + effects.step_after_ns, effects.step_ns))

    def _drift_ns(self, timeline_ns: int) -> int:
        return self._drift_folded_ns + (timeline_ns - self._drift_since) * self._drift_ppb // NS_PER_S

    def _stepped_ns(self, timeline_ns: int) -> int:
        return sum(jump for at, jump in self._steps if at <= timeline_ns)

    def offset_ns(self, timeline_ns: int) -> int:
        """Host realtime minus machine realtime at this timeline instant."""
        steps = self._steps
        stepped = steps[0][1] if len(steps) == 1 else self._stepped_ns(timeline_ns)
        return self.skew_ns + stepped + self._drift_ns(timeline_ns)

    def state(self, timeline_ns: int) -> RealtimeState:
        return RealtimeState(
            skew_ns=self.skew_ns,
            drift_ppm=self.drift_ppm,
            drift_ns=self._drift_ns(timeline_ns),
            stepped_ns=self._stepped_ns(timeline_ns),
            offset_ns=self.offset_ns(timeline_ns),
        )

    def change(
        self,
        timeline_ns: int,
        *,
        skew_ns: int | None = None,
        drift_ppm: float | None = None,
        step_ns: int = 0,
    ) -> None:
        """Change the effects at this timeline instant; everything is checked before anything changes."""
        if skew_ns is not None:
            check_skew(skew_ns, "skew_ns")
        if drift_ppm is not None:
            check_drift(drift_ppm)
        check_skew(step_ns, "step_ns")
        if skew_ns is not None:
            self.skew_ns = skew_ns
        if drift_ppm is not None:
            self._drift_folded_ns = self._drift_ns(timeline_ns)
            self._drift_since = timeline_ns
            self.drift_ppm = drift_ppm
            self._drift_ppb = round(drift_ppm * PPB_PER_PPM)
        past = [(at, jump) for at, jump in self._steps if at <= timeline_ns]
        future = [(at, jump) for at, jump in self._steps if at > timeline_ns]
        self._steps = [(timeline_ns, sum(jump for _, jump in past) + step_ns), *future]


class HostCounter:
    """The host's physical counter H, ticking on the clock's timeline at CNTFRQ, wrapped to u64,
    and the host's (possibly skewed) idea of realtime.

    Each emulated host boots at a different time, so `base_ticks` differs per host.
    """

    __slots__ = ("_base", "_boot_ticks", "_clock", "cntfrq_hz", "realtime")

    def __init__(
        self, clock: Clock, cntfrq_hz: int, base_ticks: int = 0, effects: ClockEffects | None = None
    ) -> None:
        self._clock = clock
        self.cntfrq_hz = cntfrq_hz
        self._base = u64(base_ticks)
        boot_ns, _ = clock.instant_ns()
        self._boot_ticks = ns_to_ticks(boot_ns, cntfrq_hz)
        self.realtime = HostRealtime(effects or ClockEffects(), boot_ns)

    @property
    def clock(self) -> Clock:
        return self._clock

    def _counter(self, timeline_ns: int) -> int:
        return (self._base + timeline_ns * self.cntfrq_hz // NS_PER_S - self._boot_ticks) & U64_MASK

    def elapsed_ticks(self) -> int:
        """Ticks since boot, unwrapped."""
        return self._clock.instant_ns()[0] * self.cntfrq_hz // NS_PER_S - self._boot_ticks

    def read(self) -> int:
        """Current host counter value."""
        return self._counter(self._clock.instant_ns()[0])

    def sample(self) -> tuple[int, int]:
        """(host counter, this host's CLOCK_REALTIME ns) of one instant: what a VMM on the host
        reads as its migration anchor (deliberate skew, drift and steps included)."""
        timeline, realtime = self._clock.instant_ns()
        return self._counter(timeline), realtime + self.realtime.offset_ns(timeline)

    def reference_sample(self) -> tuple[int, int]:
        """(host counter, the machine's CLOCK_REALTIME ns) of one instant: what an observer
        outside the emulated host measures guest time against (no deliberate effects)."""
        timeline, realtime = self._clock.instant_ns()
        return self._counter(timeline), realtime

    def realtime_ns(self) -> int:
        """This host's CLOCK_REALTIME now."""
        return self.sample()[1]

    def realtime_state(self) -> RealtimeState:
        return self.realtime.state(self._clock.instant_ns()[0])

    def change_realtime(
        self, *, skew_ns: int | None = None, drift_ppm: float | None = None, step_ns: int = 0
    ) -> RealtimeState:
        """Change this host's realtime effects from now on; the counter is untouched."""
        timeline = self._clock.instant_ns()[0]
        self.realtime.change(timeline, skew_ns=skew_ns, drift_ppm=drift_ppm, step_ns=step_ns)
        return self.realtime.state(timeline)

    def ns_until(self, ticks_ahead: int) -> int:
        """Nanoseconds until the counter has advanced by `ticks_ahead` from now (ceil)."""
        now = self._clock.instant_ns()[0]
        target_tick = now * self.cntfrq_hz // NS_PER_S + ticks_ahead
        target_ns = -(-target_tick * NS_PER_S // self.cntfrq_hz)
        return max(0, target_ns - now)

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
