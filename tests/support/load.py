"""Artificial CPU load for realtime tests: busy subprocesses, bounded in time, always stopped."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

# Each spinner stops by itself after this long, even if the test process dies.
MAX_SPIN_S = 120
_SPIN = f"import time\nend = time.monotonic() + {MAX_SPIN_S}\nwhile time.monotonic() < end:\n    pass\n"


@contextlib.contextmanager
def busy_cpus(count: int | None = None) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Run `count` (default: one per CPU) busy-looping processes for the duration of the block."""
    n = count if count is not None else os.cpu_count() or 1
    procs = [subprocess.Popen([sys.executable, "-c", _SPIN]) for _ in range(n)]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()
