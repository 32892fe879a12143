"""The one-read clock, system realtime steps, and deliberate realtime effects of a host.

Edge cases covered:
- SystemClock: the instant's realtime is the realtime read itself; the timeline equals it
  while the system clock never stepped; two clocks (two node processes) agree exactly
- a forward or backward step of the system realtime moves realtime but not the timeline
  (continuous to within the bracket width), and the timeline never runs backwards,
  also for a step too small to prove
- a preemption between the realtime and the monotonic read is not mistaken for a step
- the real machine clocks: instants are ordered, timeline == realtime
- ManualClock: a realtime step (set_realtime_offset_ns) does not move the host counter
- host realtime = machine realtime + skew + drift + steps; the host counter never moves;
  drift accrues exactly (ppb floor) and folds exactly when the rate changes; scheduled
  (settings) and runtime steps, forward and back; reference_sample has no effects
- out-of-range skew/drift/step are refused and change nothing
"""

from __future__ import annotations

import math

import pytest

from node.core.clock import (
    MAX_DRIFT_PPM,
    MAX_SKEW_NS,
    NS_PER_S,
    STEP_SLACK_NS,
    ClockEffects,
    HostCounter,
    ManualClock,
    SystemClock,
    ticks_between,
)
from node.core.errors import InvalidArgument

EPOCH_NS = 1_700_000_000 * NS_PER_S


class FakeMachine:
    """A machine's CLOCK_MONOTONIC and CLOCK_REALTIME; every read takes `read_ns` of true time."""

    def __init__(self, read_ns: int = 30, gap_ns: int = EPOCH_NS - 12_345) -> None:
        self.true_ns = 1_000_000
        self.read_ns = read_ns
        self.gap_ns = gap_ns  # CLOCK_REALTIME - CLOCK_MONOTONIC (changes only on a step)
        self.preempt_next_monotonic_ns = 0  # a preemption before the next monotonic read
        self.realtime_reads: list[tuple[int, int]] = []  # (true time, value) of each realtime read

    def _tick(self) -> int:
        self.true_ns += self.read_ns
        return self.true_ns

    def monotonic(self) -> int:
        self.true_ns += self.preempt_next_monotonic_ns
        self.preempt_next_monotonic_ns = 0
        return self._tick()

    def realtime(self) -> int:
        true_ns = self._tick()
        self.realtime_reads.append((true_ns, true_ns + self.gap_ns))
        return true_ns + self.gap_ns

    def instant(self, clock: SystemClock) -> tuple[int, int, int]:
        """(timeline, realtime, true time of the instant's realtime read)."""
        first = len(self.realtime_reads)
        timeline, rt = clock.instant_ns()
        true_ns, value = self.realtime_reads[first]
        assert rt == value  # the instant is its first realtime read
        return timeline, rt, true_ns

    def clock(self) -> SystemClock:
        return SystemClock(realtime=self.realtime, monotonic=self.monotonic)


def test_instant_is_one_realtime_read_and_timeline_equals_it_without_steps() -> None:
    machine = FakeMachine()
    clock = machine.clock()
    for _ in range(100):
        timeline, rt = clock.instant_ns()
        # The realtime read happened at the true time one read before the monotonic read.
        assert rt == machine.true_ns - machine.read_ns + machine.gap_ns
        assert timeline == rt
    assert clock.steps_ns == 0


def test_two_system_clocks_agree_exactly() -> None:
    machine = FakeMachine()
    a, b = machine.clock(), machine.clock()
    for _ in range(10):
        ta, ra = a.instant_ns()
        tb, rb = b.instant_ns()
        assert rb - ra == 2 * machine.read_ns  # exactly the true time between the reads
        assert (ta, tb) == (ra, rb)


@pytest.mark.parametrize("step_ns", [10_000, 3_600 * NS_PER_S, -10_000, -3_600 * NS_PER_S, -1])
def test_system_realtime_step_moves_realtime_not_the_timeline(step_ns: int) -> None:
    machine = FakeMachine()
    clock = machine.clock()
    gap_before = machine.gap_ns
    before, _, _ = machine.instant(clock)
    machine.gap_ns += step_ns
    timelines = []
    for _ in range(50):
        timeline, rt, true_ns = machine.instant(clock)
        timelines.append(timeline)
        assert rt == true_ns + machine.gap_ns
        # The timeline runs on as if nothing stepped, within a few reads' bracket width.
        assert abs(timeline - (true_ns + gap_before)) <= 2 * machine.read_ns
    assert timelines == sorted(timelines) and timelines[0] >= before
    assert clock.steps_ns != 0 or step_ns == -1


def test_small_backward_step_holds_the_timeline_still_never_back() -> None:
    machine = FakeMachine(read_ns=1)
    clock = machine.clock()
    last, _ = clock.instant_ns()
    machine.gap_ns -= STEP_SLACK_NS // 2  # too small to prove from one read
    for _ in range(5 * STEP_SLACK_NS):
        timeline, _ = clock.instant_ns()
        assert timeline >= last
        last = timeline


def test_preemption_between_the_reads_is_not_a_step() -> None:
    machine = FakeMachine()
    clock = machine.clock()
    clock.instant_ns()
    machine.preempt_next_monotonic_ns = 50_000_000  # between the realtime and the monotonic read
    timeline, rt, _ = machine.instant(clock)
    assert timeline == rt and clock.steps_ns == 0
    timeline, rt, _ = machine.instant(clock)
    assert timeline == rt and clock.steps_ns == 0


def test_the_machine_clock_instants_are_ordered() -> None:
    a, b = SystemClock(), SystemClock()
    previous = a.instant_ns()
    for clock in (b, a, b, a):
        now = clock.instant_ns()
        assert now[1] >= previous[1]
        assert now[0] == now[1] - clock.steps_ns
        previous = now


def test_manual_clock_realtime_step_does_not_move_the_counter() -> None:
    clock = ManualClock(realtime_offset_ns=EPOCH_NS)
    counter = HostCounter(clock, 25_000_000, base_ticks=100)
    clock.advance_ns(NS_PER_S)
    clock.set_realtime_offset_ns(EPOCH_NS - 3 * NS_PER_S)
    assert counter.sample() == (100 + 25_000_000, EPOCH_NS - 2 * NS_PER_S)
    clock.advance_ns(40)
    assert counter.read() == 100 + 25_000_001


def host_counter(effects: ClockEffects, hz: int = 25_000_000) -> tuple[ManualClock, HostCounter]:
    clock = ManualClock(realtime_offset_ns=EPOCH_NS)
    return clock, HostCounter(clock, hz, base_ticks=500, effects=effects)


def test_skew_moves_only_the_hosts_realtime() -> None:
    clock, counter = host_counter(ClockEffects(skew_ns=-200_000_000))
    assert counter.sample() == (500, EPOCH_NS - 200_000_000)
    assert counter.reference_sample() == (500, EPOCH_NS)
    clock.advance_ns(NS_PER_S)
    assert counter.sample() == (500 + 25_000_000, EPOCH_NS + 800_000_000)
    state = counter.realtime_state()
    assert (state.skew_ns, state.offset_ns, state.drift_ns, state.stepped_ns) == (
        -200_000_000,
        -200_000_000,
        0,
        0,
    )


def test_drift_accrues_exactly_and_folds_when_changed() -> None:
    clock, counter = host_counter(ClockEffects(drift_ppm=50.0))
    clock.advance_ns(NS_PER_S)
    assert counter.realtime_state().drift_ns == 50_000
    assert counter.sample() == (500 + 25_000_000, EPOCH_NS + NS_PER_S + 50_000)
    clock.advance_ns(10)  # 10 ns * 50 ppm = 0.0005 ns: floors to nothing more
    assert counter.realtime_state().drift_ns == 50_000
    counter.change_realtime(drift_ppm=-0.5)
    assert counter.realtime_state().drift_ns == 50_000  # folded exactly at the change
    clock.advance_ns(2 * NS_PER_S)
    state = counter.realtime_state()
    assert (state.drift_ppm, state.drift_ns) == (-0.5, 50_000 - 1_000)
    assert counter.read() == 500 + 75_000_000  # the counter never drifts


def test_scheduled_step_takes_effect_on_the_hosts_timeline() -> None:
    clock, counter = host_counter(ClockEffects(step_ns=-5 * NS_PER_S, step_after_ns=2 * NS_PER_S))
    clock.advance_ns(2 * NS_PER_S - 1)
    assert counter.realtime_state().offset_ns == 0
    clock.advance_ns(1)
    h, rt = counter.sample()
    assert (h, rt) == (500 + 50_000_000, EPOCH_NS - 3 * NS_PER_S)
    assert counter.realtime_state().stepped_ns == -5 * NS_PER_S


def test_runtime_steps_accumulate_and_keep_a_future_scheduled_step() -> None:
    clock, counter = host_counter(ClockEffects(skew_ns=7, step_ns=1_000, step_after_ns=NS_PER_S))
    state = counter.change_realtime(step_ns=300)
    assert (state.stepped_ns, state.offset_ns) == (300, 307)
    counter.change_realtime(step_ns=-100, skew_ns=0)
    assert counter.realtime_state().offset_ns == 200
    clock.advance_ns(NS_PER_S)
    assert counter.realtime_state().offset_ns == 1_200


@pytest.mark.parametrize(
    "change",
    [
        {"skew_ns": MAX_SKEW_NS + 1},
        {"step_ns": -MAX_SKEW_NS - 1},
        {"drift_ppm": MAX_DRIFT_PPM * 2},
        {"drift_ppm": math.nan},
        {"skew_ns": 5, "drift_ppm": -math.inf},
    ],
)
def test_bad_effects_are_refused_and_change_nothing(change: dict[str, float]) -> None:
    clock, counter = host_counter(ClockEffects(skew_ns=1, drift_ppm=2.0))
    clock.advance_ns(NS_PER_S)
    before = counter.realtime_state()
    with pytest.raises(InvalidArgument):
        counter.change_realtime(**change)  # type: ignore[arg-type]
    assert counter.realtime_state() == before


@pytest.mark.parametrize(
    "effects",
    [
        {"skew_ns": -MAX_SKEW_NS - 1},
        {"drift_ppm": math.nan},
        {"step_after_ns": -1},
        {"step_ns": MAX_SKEW_NS + 1},
    ],
)
def test_bad_settings_are_refused(effects: dict[str, float]) -> None:
    with pytest.raises(InvalidArgument):
        ClockEffects(**effects)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("start", "end", "hz", "ticks"),
    [
        (0, 40, 25_000_000, 1),
        (39, 40, 25_000_000, 1),  # crosses one boundary in 1 ns
        (1, 39, 25_000_000, 0),
        (EPOCH_NS, EPOCH_NS + 2_500_000_000, 25_000_000, 62_500_000),
        (5, 5 + 2_300_000_000, 25_000_000, 57_500_000),  # whole ticks: same as the floor of the span
        (0, 7, 1_000_000_000, 7),
    ],
)
def test_ticks_between(start: int, end: int, hz: int, ticks: int) -> None:
    assert ticks_between(start, end, hz) == ticks
