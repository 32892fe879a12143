"""The one way tests wait: on a condition, with a deadline (never a bare sleep as synchronisation)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
POLL_S = 0.01


async def until(
    predicate: Callable[[], object], *, timeout_s: float = 10.0, what: str = "", poll_s: float = POLL_S
) -> None:
    """Poll `predicate` (plain, or returning an awaitable) until it gives something truthy;
    TimeoutError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout_s:g} s: {what or predicate!r}")
        await asyncio.sleep(poll_s)


def until_sync(
    predicate: Callable[[], T | None], *, timeout_s: float = 10.0, what: str = "", poll_s: float = POLL_S
) -> T:
    """`until` for tests without an event loop (threads, processes); returns the truthy value."""
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout_s:g} s: {what or predicate!r}")
        time.sleep(poll_s)
    return value
