"""Launching kvmtimer processes: `up` starts its nodes here, and the tests start theirs.

A child is `python -m controller.cli COMMAND ...` (the console script) with JSON logs on
stderr; it is stopped with SIGTERM, then SIGKILL if it does not stop in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from controller.cli.up.scenario import NodePlan

NODE_START_TIMEOUT_S = 30.0
NODE_STOP_TIMEOUT_S = 10.0


def kvmtimer_command() -> list[str]:
    """The console script, run by this interpreter (no PATH look-up, works in any venv)."""
    return [sys.executable, "-m", "controller.cli"]


def child_env(*, inherit_settings: bool = True) -> dict[str, str]:
    """This process's environment, unbuffered; without KVMTIMER_* settings unless `inherit_settings`."""
    env = {k: v for k, v in os.environ.items() if inherit_settings or not k.startswith("KVMTIMER_")}
    return {**env, "PYTHONUNBUFFERED": "1"}


def log_event(line: str | bytes) -> dict[str, object] | None:
    """The JSON log record on one line of a child's stderr, or None for anything else."""
    with contextlib.suppress(ValueError):
        record = json.loads(line)
        if isinstance(record, dict):
            return record
    return None


def wait_for_log_event(proc: subprocess.Popen[str], event: str, timeout_s: float = 20.0) -> dict[str, object]:
    """Read JSON log lines from the process's stderr until `event` appears."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            if proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode} before logging {event!r}")
            continue
        record = log_event(line)
        if record is not None and record.get("event") == event:
            return record
    raise TimeoutError(f"no {event!r} log line within {timeout_s} s")


@contextlib.contextmanager
def kvmtimer_process(
    command: str, args: Sequence[str], *, stop_timeout_s: float = 15.0, prefix: Sequence[str] = ()
) -> Iterator[subprocess.Popen[str]]:
    """Run `kvmtimer COMMAND ARGS` with its JSON logs on a pipe; SIGTERM (then SIGKILL) it at the end.

    `prefix`: a command that runs it, e.g. `ip netns exec NS` (which execs, so the PID stays).
    """
    proc = subprocess.Popen(
        [*prefix, *kvmtimer_command(), command, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        yield proc
    finally:
        stop_process(proc, stop_timeout_s)
        if proc.stderr is not None:
            proc.stderr.close()


def stop_process(proc: subprocess.Popen[str], timeout_s: float = NODE_STOP_TIMEOUT_S) -> int:
    """SIGTERM, wait up to `timeout_s`, then SIGKILL; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@dataclass(slots=True)
class NodeProcess:
    """One `kvmtimer node` child process; its stderr is drained into `tail` (and the log file)."""

    plan: NodePlan
    proc: asyncio.subprocess.Process
    port: int = 0
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=20))
    drain: asyncio.Task[None] | None = None
    stopped_cleanly: bool = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


async def spawn_node(plan: NodePlan, log_file: TextIO | None, extra_args: Sequence[str] = ()) -> NodeProcess:
    proc = await asyncio.create_subprocess_exec(
        *kvmtimer_command(),
        *plan.argv(),
        *extra_args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        # Only `up` configures its nodes: KVMTIMER_* settings meant for client commands (TLS
        # files, token, config file) must not reach them.
        env=child_env(inherit_settings=False),
        # Own process group: a terminal Ctrl-C reaches only `up`, which stops the nodes in order.
        start_new_session=True,
    )
    node = NodeProcess(plan, proc)
    listening = asyncio.get_running_loop().create_future()
    node.drain = asyncio.create_task(_drain(node, listening, log_file), name=f"drain-{plan.node_id}")
    try:
        node.port = await asyncio.wait_for(listening, NODE_START_TIMEOUT_S)
    except BaseException:
        await stop_node(node)
        raise
    return node


async def _drain(node: NodeProcess, listening: asyncio.Future[int], log_file: TextIO | None) -> None:
    """Read the node's JSON log lines: the port from `node_listening`, `node_stopped` at the end."""
    assert node.proc.stderr is not None
    while line := (await node.proc.stderr.readline()).decode(errors="replace"):
        node.tail.append(line.rstrip())
        if log_file is not None:
            log_file.write(line)
        record = log_event(line)
        if record is None:
            continue
        if record.get("event") == "node_listening" and not listening.done():
            port = record.get("port")
            if isinstance(port, int):
                listening.set_result(port)
        elif record.get("event") == "node_stopped":
            node.stopped_cleanly = True
    if not listening.done():
        tail = "\n  ".join(node.tail)
        listening.set_exception(RuntimeError(f"{node.plan.node_id} exited before listening:\n  {tail}"))


async def stop_node(node: NodeProcess) -> int:
    """SIGTERM, wait, SIGKILL if it does not stop; returns its exit code."""
    proc = node.proc
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), NODE_STOP_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    if node.drain is not None:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(node.drain, 2.0)
    assert proc.returncode is not None
    return proc.returncode
