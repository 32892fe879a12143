"""`kvmtimer up` never dies on one slow call: transient gRPC errors are retried with back-off
and counted; start-up shows its progress (a bar with counts and ETA on a terminal)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TextIO, TypeVar

import grpc

from node.runtime.backoff import Backoff

T = TypeVar("T")

# Codes a loaded machine produces without anything being wrong: the call may succeed later.
TRANSIENT = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)
ATTEMPTS = 6  # per call: 0.2 + 0.4 + 0.8 + 1.6 + 3.2 s of back-off at most between them


@dataclass(slots=True)
class Retrier:
    """Retries transient failures of idempotent calls; `retried` counts them by status code."""

    attempts: int = ATTEMPTS
    initial_s: float = 0.2
    max_s: float = 5.0
    retried: Counter[str] = field(default_factory=Counter)

    async def call(self, fn: Callable[[int], Awaitable[T]]) -> T:
        """`fn(attempt)` until it succeeds, fails for good, or the attempts run out (then its last error)."""
        backoff = Backoff(self.initial_s, self.max_s, jitter=0.2)
        attempt = 0
        while True:
            try:
                return await fn(attempt)
            except grpc.aio.AioRpcError as err:
                if err.code() not in TRANSIENT or attempt + 1 >= self.attempts:
                    raise
                self.retried[err.code().name] += 1
            attempt += 1
            await asyncio.sleep(backoff.next_s())


def eta_text(done: int, total: int, elapsed_s: float) -> str:
    """`done/total` with the elapsed time and, once something is done, the estimated time left."""
    eta = "" if done == 0 or done >= total else f", ETA {elapsed_s / done * (total - done):.0f} s"
    return f"{done}/{total} in {elapsed_s:.1f} s{eta}"


@dataclass(slots=True)
class Progress:
    """Start-up progress: a bar redrawn in place on a terminal, a line every 10 % otherwise."""

    label: str  # what is counted, e.g. "guests created"
    total: int
    tty: bool
    out: TextIO = field(default_factory=lambda: sys.stdout)
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    _drawn_at: float = 0.0
    _printed_tenths: int = 0

    def advance(self, n: int = 1) -> None:
        self.done += n
        elapsed = time.monotonic() - self.started
        if self.tty:
            now = time.monotonic()
            if now - self._drawn_at >= 0.1 or self.done >= self.total:
                self._drawn_at = now
                width = 30
                filled = width * self.done // max(1, self.total)
                bar = "#" * filled + "." * (width - filled)
                self.out.write(f"\r  {self.label} [{bar}] {eta_text(self.done, self.total, elapsed)}\x1b[K")
                self.out.flush()
            return
        tenths = 10 * self.done // max(1, self.total)
        if tenths > self._printed_tenths:
            self._printed_tenths = tenths
            print(f"  {self.label}: {eta_text(self.done, self.total, elapsed)}", file=self.out, flush=True)

    def finish(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()
