"""Clocks and the host counter.

Edge cases covered:
- u64 wrap helper, tick <-> ns conversions (floor) at common CNTFRQs
- ManualClock never goes backwards; advance_to in the past is a no-op; realtime skew
- HostCounter.step is exact for every CNTFRQ in 1 Hz..1 GHz, also from mid-tick clock times
- the host counter wraps modulo 2^64 from a high boot base
- ns_until rounds up to the first nanosecond showing the new value
- stepping needs a ManualClock; negative steps are refused and change nothing
"""

from __future__ import annotations

import pytest

from node.core.clock import (
    NS_PER_S,
    U64_MASK,
    HostCounter,
    ManualClock,
    SystemClock,
    ns_to_ticks,
    ticks_to_ns,
    u64,
)
from node.core.errors import InvalidArgument, WrongClockMode

U64 = 1 << 64


@pytest.mark.parametrize(
    ("value", "wrapped"),
    [(0, 0), (U64 - 1, U64 - 1), (U64, 0), (U64 + 5, 5), (-1, U64 - 1), (-U64, 0)],
)
def test_u64(value: int, wrapped: int) -> None:
    assert u64(value) == wrapped
    assert U64_MASK == U64 - 1


@pytest.mark.parametrize(
    ("ticks", "hz", "ns"),
    [
        (1, 25_000_000, 40),
        (62_500_000, 25_000_000, 2_500_000_000),
        (1, 1_000_000_000, 1),
        (1, 24_000_000, 41),  # 41.67 ns, floored
        (3, 1, 3 * NS_PER_S),
        (0, 19_200_000, 0),
    ],
)
def test_ticks_to_ns(ticks: int, hz: int, ns: int) -> None:
    assert ticks_to_ns(ticks, hz) == ns


@pytest.mark.parametrize(
    ("ns", "hz", "ticks"),
    [
        (2_500_000_000, 25_000_000, 62_500_000),
        (39, 25_000_000, 0),  # floor
        (40, 25_000_000, 1),
        (500_000_000, 25_000_000, 12_500_000),
        (999_999_999, 1, 0),
    ],
)
def test_ns_to_ticks(ns: int, hz: int, ticks: int) -> None:
    assert ns_to_ticks(ns, hz) == ticks


def test_manual_clock() -> None:
    clock = ManualClock(start_ns=10, realtime_offset_ns=1000)
    assert (clock.monotonic_ns(), clock.realtime_ns()) == (10, 1010)
    clock.advance_ns(5)
    clock.advance_to_ns(3)  # in the past: no-op
    assert clock.monotonic_ns() == 15
    clock.advance_to_ns(20)
    assert clock.monotonic_ns() == 20
    with pytest.raises(InvalidArgument):
        clock.advance_ns(-1)
    assert clock.monotonic_ns() == 20
    clock.set_realtime_offset_ns(-5)
    assert clock.realtime_ns() == 15


def test_default_manual_clock_realtime_epoch() -> None:
    assert ManualClock().realtime_ns() == 1_700_000_000 * NS_PER_S


@pytest.mark.parametrize(
    "hz", [1, 3, 7, 999_999_937, 19_200_000, 24_000_000, 25_000_000, 62_500_000, 1_000_000_000]
)
@pytest.mark.parametrize("start_ns", [0, 1, 37])
def test_step_is_exact_at_every_frequency(hz: int, start_ns: int) -> None:
    clock = ManualClock()
    counter = HostCounter(clock, hz, base_ticks=500)
    clock.advance_ns(start_ns)  # possibly mid-tick
    h = counter.read()
    for delta in (0, 1, 2, 3, 1000, 12_345_678, 1):
        h += delta
        assert counter.step(delta) == h
        assert counter.read() == h
        if delta:
            # The clock stopped at the first nanosecond showing h: one ns earlier showed h - 1.
            assert (clock.monotonic_ns() - 1) * hz // NS_PER_S == counter.elapsed_ticks() - 1


def test_ns_until_rounds_up() -> None:
    clock = ManualClock()
    counter = HostCounter(clock, 25_000_000)
    assert counter.ns_until(1) == 40
    assert counter.ns_until(0) == 0
    clock.advance_ns(10)
    assert counter.ns_until(1) == 30
    counter3 = HostCounter(clock, 3)  # 333,333,333.3 ns per tick
    # Ticks fall on the timeline's absolute grid (shared by every host), not at boot + k/f.
    assert counter3.ns_until(1) == 333_333_334 - 10


def test_counter_wraps_from_a_high_base() -> None:
    clock = ManualClock()
    counter = HostCounter(clock, 25_000_000, base_ticks=U64 - 2)
    assert counter.read() == U64 - 2
    assert counter.step(5) == 3
    assert counter.elapsed_ticks() == 5


def test_counter_base_is_wrapped_and_boot_time_taken_from_the_clock() -> None:
    clock = ManualClock(start_ns=1_000)
    counter = HostCounter(clock, 1_000_000_000, base_ticks=U64 + 7)
    assert counter.read() == 7
    clock.advance_ns(10)
    assert counter.read() == 17
    assert counter.sample() == (17, clock.realtime_ns())
    assert counter.clock is clock


def test_negative_step_is_refused() -> None:
    counter = HostCounter(ManualClock(), 25_000_000, base_ticks=9)
    with pytest.raises(InvalidArgument):
        counter.step(-1)
    assert counter.read() == 9


def test_step_needs_a_manual_clock() -> None:
    counter = HostCounter(SystemClock(), 25_000_000)
    with pytest.raises(WrongClockMode):
        counter.step(1)
