"""asyncio helpers shared by the kvmtimer processes."""

from __future__ import annotations

import asyncio
import contextlib
import signal


def stop_on_signals(signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)) -> asyncio.Event:
    """An event set by SIGTERM/SIGINT. Call it first thing in a server's main coroutine, so a
    signal that arrives while the server starts still stops it cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    return stop


async def cancel_and_wait(task: asyncio.Task[object] | None) -> None:
    """Cancel a background task and wait until it has ended (no-op for None)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
