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
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

from controller.cli.up.scenario import NodePlan

NODE_START_TIMEOUT_S = 30.0
NODE_STOP_TIMEOUT_S = 10.0


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
        sys.executable,
        "-m",
        "controller.cli",
        *plan.argv(),
        *extra_args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        # Only `up` configures its nodes: KVMTIMER_* settings meant for client commands (TLS
        # files, token, config file) must not reach them.
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("KVMTIMER_")},
            "PYTHONUNBUFFERED": "1",
        },
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
        with contextlib.suppress(ValueError, KeyError, TypeError):
            record = json.loads(line)
            if not isinstance(record, dict):
                continue
            if record.get("event") == "node_listening" and not listening.done():
                listening.set_result(int(record["port"]))
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
