"""Fan-out hub: one publisher, many subscribers, each with a bounded buffer.

A slow subscriber never blocks the publisher: when its buffer is full the
newest item is dropped and counted on that subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
DEFAULT_BUFFER = 1024


@dataclass(eq=False)
class Subscription(Generic[T]):
    """One subscriber's queue and its drop count."""

    queue: asyncio.Queue[T | None]
    dropped: int = 0
    closed: bool = field(default=False)


class Hub(Generic[T]):
    def __init__(self, buffer: int = DEFAULT_BUFFER) -> None:
        self._buffer = buffer
        self._subs: set[Subscription[T]] = set()
        self.dropped_total = 0  # items dropped on any subscription, ever
        self._listeners: list[Callable[[], None]] = []

    def on_subscribers_changed(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever a subscription starts or ends (e.g. to sample only when watched)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def publish(self, item: T) -> None:
        for sub in self._subs:
            try:
                sub.queue.put_nowait(item)
            except asyncio.QueueFull:
                sub.dropped += 1
                self.dropped_total += 1

    def subscribe(self) -> Subscription[T]:
        sub: Subscription[T] = Subscription(asyncio.Queue(self._buffer))
        self._subs.add(sub)
        self._changed()
        return sub

    def unsubscribe(self, sub: Subscription[T]) -> None:
        if sub in self._subs:
            self._subs.discard(sub)
            self._changed()
        sub.closed = True

    def close(self) -> None:
        """End every subscription's stream."""
        for sub in list(self._subs):
            self.end(sub)

    @staticmethod
    def end(sub: Subscription[T]) -> None:
        """End one subscription's stream after what it has queued (the newest item makes
        room for the end marker when the buffer is full, and counts as dropped)."""
        try:
            sub.queue.put_nowait(None)
        except asyncio.QueueFull:
            _ = sub.queue.get_nowait()
            sub.queue.put_nowait(None)
            sub.dropped += 1

    @classmethod
    async def finish(cls, task: asyncio.Task[None], sub: Subscription[T], timeout_s: float) -> None:
        """End `sub` and let its consumer `task` drain it for up to `timeout_s`, then cancel it."""
        if not task.done():
            cls.end(sub)
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout_s)
            except TimeoutError:
                task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def stream(self, sub: Subscription[T]) -> AsyncIterator[T]:
        """Items of one subscription until the hub closes; unsubscribes on exit."""
        try:
            while (item := await sub.queue.get()) is not None:
                yield item
        finally:
            self.unsubscribe(sub)
