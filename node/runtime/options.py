"""Command-line option types and options every kvmtimer command shares.

Number types raise argparse.ArgumentTypeError with the bound in the message, so a bad
value from a flag, the environment or the config file reads the same (node.runtime.settings).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

LOG_LEVELS = ("debug", "info", "warning", "error")


def int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= `minimum`."""

    def parse(value: str) -> int:
        number = int(value)
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return number

    parse.__name__ = "int"  # argparse: "invalid int value" for a non-number
    return parse


def int_between(low: int, high: int, unit: str = "") -> Callable[[str], int]:
    """argparse type: an integer in low..high."""

    def parse(value: str) -> int:
        number = int(value)
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(
                f"must be {low}..{high}{' ' + unit if unit else ''}, got {value}"
            )
        return number

    parse.__name__ = "int"
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def positive_float(value: str) -> float:
    """argparse type: a float > 0."""
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return number


def add_log_level_argument(
    parser: argparse.ArgumentParser, *, help: str = ", ".join(LOG_LEVELS), metavar: str | None = None
) -> None:
    """--log-level (default info)."""
    parser.add_argument("--log-level", default="info", metavar=metavar, help=help)
