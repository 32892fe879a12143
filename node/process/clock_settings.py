"""`kvmtimer node` settings for deliberate realtime clock effects (skew, drift, a step).

They move only the emulated host's idea of realtime (what a VMM on it reads as
CLOCK_REALTIME: migration anchors, GetClock, pause/resume instants); the host counter
keeps running at CNTFRQ. The same effects can be changed at runtime with the Node RPC
SetClockEffects. Simulated nodes apply them deterministically on their simulated time.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from node.core.clock import NS_PER_S, ClockEffects


@dataclass(frozen=True, slots=True)
class ClockEffectOptions:
    """--realtime-*: deliberate effects on the host's realtime (the counter is unaffected)."""

    realtime_skew_ns: int  # --realtime-skew-ns
    realtime_drift_ppm: float  # --realtime-drift-ppm
    realtime_step_ns: int  # --realtime-step-ns
    realtime_step_after_s: float  # --realtime-step-after-s


def add_clock_effect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--realtime-skew-ns",
        type=int,
        default=0,
        metavar="NS",
        help="deliberate skew: this host's realtime minus the machine's, in ns (the counter is unaffected)",
    )
    parser.add_argument(
        "--realtime-drift-ppm",
        type=float,
        default=0.0,
        metavar="PPM",
        help="deliberate drift: this host's realtime gains PPM µs per second (negative: loses)",
    )
    parser.add_argument(
        "--realtime-step-ns",
        type=int,
        default=0,
        metavar="NS",
        help="an NTP-like jump of this host's realtime by NS (forward or back), once",
    )
    parser.add_argument(
        "--realtime-step-after-s",
        type=float,
        default=0.0,
        metavar="S",
        help="when the --realtime-step-ns jump happens: S seconds after the node started",
    )


def clock_effects_of(args: ClockEffectOptions) -> ClockEffects:
    """The settings as core ClockEffects (InvalidArgument, exit 2, when out of range)."""
    return ClockEffects(
        skew_ns=args.realtime_skew_ns,
        drift_ppm=args.realtime_drift_ppm,
        step_ns=args.realtime_step_ns,
        step_after_ns=round(args.realtime_step_after_s * NS_PER_S),
    )
