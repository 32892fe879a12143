"""`kvmtimer up`: a local cluster on this machine, migrating guests around until Ctrl-C.

Starts --nodes real `kvmtimer node` processes on 127.0.0.1 with mixed features (ECV2
nVHE, ECV2 VHE, non-ECV; all three kernel API profiles; 25 MHz; different boot times),
a controller (printed address: `kvmtimer nodes --controller ADDR` works meanwhile),
--guests guests of 1-4 vCPUs with a 10 ms timer workload (some also on the physical
timer), then migrates a random guest to a random other node (method AUTO) every
--interval seconds and shows nodes, guests and the last migrations. Refusals (e.g. a
physical-timer guest towards a BY_VALUE kernel) are counted and shown.

Ctrl-C / SIGTERM / --duration: stop migrating, wait for the migrations in flight, print a
summary (outcomes per method, downtime percentiles, counter errors, what every guest
observed), stop the node processes, exit 0. The last line is `SUMMARY {json}`.

Telemetry: the cluster's telemetry goes to MQTT (README "MQTT telemetry"): to --mqtt URL,
else to an embedded broker (amqtt, in this process, on a free 127.0.0.1 port, printed at
the start), or nowhere with --no-mqtt; the node processes publish their own status there.
--record FILE writes every telemetry item (vCPU sample batches, migration events, node
health) as JSON lines, which `kvmtimer report --from FILE --out FILE.png` draws.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import grpc
import structlog
from kvmtimer.v1 import controller_pb2 as cpb
from kvmtimer.v1 import controller_pb2_grpc as cpb_grpc
from kvmtimer.v1 import node_pb2 as pb

from controller import views
from controller.client_cli import host_port
from controller.service.cluster import Cluster
from controller.service.server import build_server, mark_serving
from controller.telemetry.local import add_local_telemetry_arguments, local_telemetry
from node.core.features import ApiProfile

CNTFRQ_HZ = 25_000_000
PERIOD_TICKS = 250_000  # 10 ms at 25 MHz
DAY_TICKS = 86_400 * CNTFRQ_HZ
REFRESH_S = 0.5  # live view period
PROGRESS_S = 5.0  # plain-mode status line period
LAST_MIGRATIONS = 8
NODE_START_TIMEOUT_S = 30.0
NODE_STOP_TIMEOUT_S = 10.0
IN_FLIGHT_TIMEOUT_S = 30.0
RPC_TIMEOUT_S = 10.0
MIGRATE_TIMEOUT_S = 60.0

# Host hardware and kernel API cycle independently, so any 3 consecutive nodes have every
# API profile and include ECV2 nVHE, ECV2 VHE (CNTPOFF) and non-ECV hosts.
HARDWARE = ((2, False), (2, True), (0, True), (0, False))  # (ECV level, VHE)
PROFILES = (ApiProfile.VM_COUNTER_OFFSET, ApiProfile.VCPU_OFFSETS, ApiProfile.BY_VALUE)

log = structlog.get_logger("kvmtimer.up")


@dataclass(frozen=True, slots=True)
class NodePlan:
    """How one node process is started."""

    node_id: str  # --node-id
    ecv: int  # --ecv
    vhe: bool  # --vhe
    api_profile: ApiProfile  # --api-profile
    counter_base: int  # --counter-base: host counter at boot
    skew_ns: int = 0  # --realtime-skew-ns: deliberate skew of the node's realtime

    @property
    def supports_physical_offset(self) -> bool:
        return self.api_profile is not ApiProfile.BY_VALUE

    def argv(self) -> list[str]:
        args = [
            "node",
            "--listen",
            "127.0.0.1:0",
            "--node-id",
            self.node_id,
            "--cntfrq",
            str(CNTFRQ_HZ),
            "--ecv",
            str(self.ecv),
            "--api-profile",
            self.api_profile.name,
            "--clock",
            "realtime",
            "--counter-base",
            str(self.counter_base),
        ]
        if self.vhe:
            args.append("--vhe")
        if self.skew_ns:
            args += ["--realtime-skew-ns", str(self.skew_ns)]
        return args


def node_plans(count: int, skew_ns: int = 0) -> list[NodePlan]:
    """node-1 ecv2/nVHE/VM_COUNTER_OFFSET, node-2 ecv2/VHE/VCPU_OFFSETS, node-3 ecv0/VHE/BY_VALUE, ...

    With `skew_ns`, the nodes' realtimes disagree on purpose: node-1 0, node-2 +skew,
    node-3 -skew, node-4 +2 skew, node-5 -2 skew, ...
    """
    plans = []
    for i in range(count):
        ecv, vhe = HARDWARE[i % len(HARDWARE)]
        skew = (i + 1) // 2 * skew_ns * (1 if i % 2 else -1)
        plans.append(
            NodePlan(f"node-{i + 1}", ecv, vhe, PROFILES[i % len(PROFILES)], (3 + 7 * i) * DAY_TICKS, skew)
        )
    return plans


@dataclass(frozen=True, slots=True)
class GuestPlan:
    guest_id: str
    node_id: str
    vcpus: int
    use_ptimer: bool


def guest_plans(count: int, nodes: Sequence[NodePlan], rng: random.Random) -> list[GuestPlan]:
    """Round-robin over the nodes; every other guest also uses the physical timer where it can move."""
    plans = []
    for i in range(count):
        node = nodes[i % len(nodes)]
        plans.append(
            GuestPlan(
                f"guest-{i + 1}",
                node.node_id,
                rng.randint(1, 4),
                i % 2 == 1 and node.supports_physical_offset,
            )
        )
    return plans


# --- node processes ------------------------------------------------------------


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


# --- the running demo ------------------------------------------------------------


@dataclass(slots=True)
class Refusal:
    guest_id: str
    destination: str
    code: str
    details: str


@dataclass(slots=True)
class Demo:
    """State of one `kvmtimer up` run."""

    args: argparse.Namespace
    stub: cpb_grpc.ControllerStub
    address: str
    rng: random.Random
    started: float = field(default_factory=time.monotonic)
    nodes: list[cpb.NodeStatus] = field(default_factory=list)
    guests: list[cpb.Guest] = field(default_factory=list)
    recent: dict[str, cpb.Migration] = field(default_factory=dict)  # last migrations by id, oldest first
    finished: list[cpb.Migration] = field(default_factory=list)  # every migration that ended
    refusals: list[Refusal] = field(default_factory=list)
    in_flight: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # by guest id
    last_error: dict[str, int] = field(default_factory=dict)  # guest -> counter error of its last move

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def counts(self) -> tuple[int, int, int]:
        ok = sum(1 for m in self.finished if m.phase == cpb.MIGRATION_PHASE_SUCCEEDED)
        return ok, len(self.finished) - ok, len(self.refusals)

    def remember(self, m: cpb.Migration) -> None:
        self.recent.pop(m.migration_id, None)
        self.recent[m.migration_id] = m
        while len(self.recent) > LAST_MIGRATIONS:
            del self.recent[next(iter(self.recent))]

    def say(self, line: str) -> None:
        """A progress line (plain mode only; the live view shows the same state)."""
        if not self.args.tty:
            print(f"[{self.elapsed():6.1f}s] {line}", flush=True)

    # --- migrations --------------------------------------------------------

    async def refresh(self) -> None:
        nodes: cpb.ListNodesResponse = await self.stub.ListNodes(
            cpb.ListNodesRequest(), timeout=RPC_TIMEOUT_S
        )
        guests: cpb.ListGuestsResponse = await self.stub.ListGuests(
            cpb.ListGuestsRequest(), timeout=RPC_TIMEOUT_S
        )
        self.nodes, self.guests = list(nodes.nodes), list(guests.guests)

    async def migrate_one(self) -> None:
        """Pick a guest that is not moving and another node, and start moving it (AUTO)."""
        await self.refresh()
        candidates = [g for g in self.guests if not g.migrating and g.guest_id not in self.in_flight]
        if not candidates or len(self.nodes) < 2:
            return
        guest = self.rng.choice(candidates)
        destination = self.rng.choice([n.node_id for n in self.nodes if n.node_id != guest.node_id])
        task = asyncio.create_task(self._migrate(guest, destination), name=f"migrate-{guest.guest_id}")
        self.in_flight[guest.guest_id] = task
        task.add_done_callback(lambda _: self.in_flight.pop(guest.guest_id, None))

    async def _migrate(self, guest: cpb.Guest, destination: str) -> None:
        # As QEMU would: a guest whose physical timer a pre-6.4 kernel cannot carry still moves;
        # the view and the summary show what it lost (Migration.not_carried).
        request = cpb.MigrateRequest(
            guest_id=guest.guest_id,
            destination=destination,
            method=cpb.MIGRATION_METHOD_AUTO,
            wait=True,
            allow_state_loss=True,
        )
        try:
            record: cpb.Migration = await self.stub.Migrate(request, timeout=MIGRATE_TIMEOUT_S)
        except grpc.aio.AioRpcError as err:
            refusal = Refusal(guest.guest_id, destination, err.code().name, err.details() or "")
            self.refusals.append(refusal)
            self.say(
                f"refused  {guest.guest_id} {guest.node_id}->{destination}: {refusal.code}: {refusal.details}"
            )
            return
        self.finished.append(record)
        self.remember(record)
        if record.HasField("counter_error_ticks"):
            self.last_error[record.guest_id] = record.counter_error_ticks
        self.say(
            f"{views.phase_name(record.phase).lower():8} {record.migration_id} {record.guest_id} "
            f"{record.source}->{record.destination} {views.method_name(record.method)}"
            f" downtime {views.ms(record.downtime)} ms counter error {views.counter_error(record)} ticks"
            + (f", lost {views.state_lost(record)}" if views.state_lost(record) else "")
            + (f": {record.reason}" if record.reason else "")
        )

    async def migrate_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.migrate_one()
            except grpc.aio.AioRpcError as err:
                self.say(f"controller error: {err.code().name}: {err.details()}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.args.interval)

    async def watch_loop(self) -> None:
        """Follow every phase change of every migration, for the live view."""
        with contextlib.suppress(grpc.aio.AioRpcError):
            async for event in self.stub.WatchMigrations(cpb.WatchMigrationsRequest()):
                self.remember(event.migration)

    async def view_loop(self, stop: asyncio.Event) -> None:
        next_progress = PROGRESS_S
        while not stop.is_set():
            if self.args.tty:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await self.refresh()
                self.draw()
            elif self.elapsed() >= next_progress:
                next_progress += PROGRESS_S
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await self.refresh()
                self.say(self.status_line())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), REFRESH_S)

    # --- rendering ---------------------------------------------------------

    def status_line(self) -> str:
        ok, failed, refused = self.counts()
        up = sum(1 for n in self.nodes if n.healthy)
        return (
            f"nodes {up}/{len(self.nodes)} up, {len(self.guests)} guests, migrations: "
            f"{ok} succeeded, {failed} failed, {refused} refused, {len(self.in_flight)} in flight"
        )

    def frame(self) -> str:
        header = (
            f"kvmtimer up  controller {self.address}  {self.elapsed():.1f} s"
            + (f" / {self.args.duration:g} s" if self.args.duration else "")
            + "  (Ctrl-C to stop)"
        )
        nodes = views.table(
            ("NODE", "FEATURES", "PROFILE", "CNTFRQ", "HEALTH", "GUESTS", "VCPUS"),
            (
                (
                    n.node_id,
                    views.features_label(n),
                    views.profile_name(n.api_profile),
                    views.frequency_label(n.cntfrq_hz),
                    "up" if n.healthy else "DOWN",
                    n.guest_count,
                    n.vcpu_count,
                )
                for n in self.nodes
            ),
        )
        guests = views.table(
            ("GUEST", "NODE", "VCPUS", "PTIMER", "MIGRATIONS", "LAST COUNTER ERROR (TICKS)"),
            (
                (
                    g.guest_id,
                    g.node_id + (f" -> {g.migrating}" if g.migrating else ""),
                    g.vcpus,
                    "yes" if g.workload.use_ptimer else "no",
                    g.migrations,
                    self.last_error.get(g.guest_id),
                )
                for g in self.guests
            ),
        )
        migrations = views.table(
            (
                "MIGRATION",
                "GUEST",
                "SOURCE->DEST",
                "METHOD",
                "PHASE",
                "DOWNTIME MS",
                "ERR TICKS",
                "APPLIED AS",
                "LOST",
            ),
            (
                (
                    m.migration_id,
                    m.guest_id,
                    f"{m.source}->{m.destination}",
                    views.method_name(m.method),
                    views.phase_name(m.phase),
                    views.ms(m.downtime) if m.downtime else None,
                    views.counter_error(m),
                    m.applied_as,
                    views.state_lost(m) or None,
                )
                for m in reversed(self.recent.values())
            ),
        )
        lines = [header, self.status_line(), "", nodes, "", guests, "", "Last migrations", migrations]
        if self.refusals:
            r = self.refusals[-1]
            lines += ["", f"Last refusal: {r.guest_id} -> {r.destination}: {r.code}: {r.details}"]
        return "\n".join(lines)

    def draw(self) -> None:
        width = shutil.get_terminal_size().columns
        text = "\n".join(line[:width] + "\x1b[K" for line in self.frame().split("\n"))
        sys.stdout.write("\x1b[H" + text + "\n\x1b[J")
        sys.stdout.flush()


# --- summary -----------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1) of a non-empty sample, else None."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def build_summary(
    demo: Demo,
    migrations: Sequence[cpb.Migration],
    guests: Sequence[cpb.Guest],
    processes: Mapping[str, tuple[int | None, int | None]],
) -> dict[str, object]:
    """Everything the run showed, as plain JSON-able values."""
    by_method: dict[str, Counter[str]] = {}
    downtimes: dict[str, list[float]] = {}
    errors: dict[str, list[int]] = {}
    for m in migrations:
        if m.phase not in (cpb.MIGRATION_PHASE_SUCCEEDED, cpb.MIGRATION_PHASE_FAILED):
            continue
        name = views.method_name(m.method)
        ok = m.phase == cpb.MIGRATION_PHASE_SUCCEEDED
        by_method.setdefault(name, Counter())["succeeded" if ok else "failed"] += 1
        if ok:
            downtimes.setdefault(name, []).append(m.downtime / 1000)
            if m.HasField("counter_error_ticks"):
                errors.setdefault(name, []).append(m.counter_error_ticks)
    all_downtimes = [d for values in downtimes.values() for d in values]
    offset_errors = [abs(e) for name, values in errors.items() if name != "BY_VALUE" for e in values]
    by_value_errors = [abs(e) for e in errors.get("BY_VALUE", [])]
    methods = {
        name: {
            "succeeded": counts["succeeded"],
            "failed": counts["failed"],
            "downtime_ms_p50": _round(percentile(downtimes.get(name, []), 0.5)),
            "downtime_ms_p99": _round(percentile(downtimes.get(name, []), 0.99)),
            "max_abs_counter_error_ticks": max((abs(e) for e in errors.get(name, [])), default=None),
        }
        for name, counts in sorted(by_method.items())
    }
    guest_rows: list[dict[str, object]] = []
    for g in guests:
        row: dict[str, object] = {
            "guest_id": g.guest_id,
            "node_id": g.node_id,
            "vcpus": g.vcpus,
            "use_ptimer": g.workload.use_ptimer,
            "migrations": g.migrations,
        }
        if g.HasField("observations"):
            received, expected, shortfall = views.interrupts(g.observations)
            row |= {
                "min_step": views.min_step(g.observations),
                "interrupts_received": received,
                "interrupts_expected": expected,
                "max_timer_shortfall": shortfall,
                "max_lateness_ticks": max((o.max_lateness_ticks for o in g.observations.vcpus), default=0),
            }
        guest_rows.append(row)
    succeeded = sum(c["succeeded"] for c in by_method.values())
    failed = sum(c["failed"] for c in by_method.values())
    steps = [r.get("min_step") for r in guest_rows]
    return {
        "duration_s": round(demo.elapsed(), 3),
        "controller": demo.address,
        "nodes": [
            {
                "node_id": n.node_id,
                "ecv": n.ecv,
                "vhe": n.vhe,
                "api_profile": views.profile_name(n.api_profile),
                "cntfrq_hz": n.cntfrq_hz,
                "healthy": n.healthy,
                "pid": processes.get(n.node_id, (None, None))[0],
                "exit_code": processes.get(n.node_id, (None, None))[1],
            }
            for n in demo.nodes
        ],
        "migrations": {"succeeded": succeeded, "failed": failed, "refused": len(demo.refusals)},
        "moved_with_state_loss": [
            {"migration_id": m.migration_id, "guest_id": m.guest_id, "not_carried": list(m.not_carried)}
            for m in migrations
            if m.phase == cpb.MIGRATION_PHASE_SUCCEEDED and views.state_lost(m)
        ],
        "by_method": methods,
        "refused_by_method": {"AUTO": len(demo.refusals)} if demo.refusals else {},
        "refused_by_code": dict(Counter(r.code for r in demo.refusals)),
        "downtime_ms": {
            "p50": _round(percentile(all_downtimes, 0.5)),
            "p99": _round(percentile(all_downtimes, 0.99)),
            "max": _round(max(all_downtimes, default=None)),
        },
        "max_abs_counter_error_ticks": {
            "offset_methods": max(offset_errors, default=None),
            "by_value": max(by_value_errors, default=None),
        },
        "guests": guest_rows,
        "all_min_steps_non_negative": all(isinstance(s, int) and s >= 0 for s in steps),
        "node_processes_stopped": all(code is not None for _, code in processes.values()),
    }


def summary_text(summary: dict[str, object]) -> str:
    def get(key: str) -> dict[str, object]:
        value = summary[key]
        assert isinstance(value, dict)
        return value

    def show(value: object, unit: str = "") -> str:
        return "-" if value is None else f"{value}{unit}"

    counts, downtime, errors = get("migrations"), get("downtime_ms"), get("max_abs_counter_error_ticks")
    lines = [
        f"Summary after {summary['duration_s']} s of migrations: {counts['succeeded']} succeeded, "
        f"{counts['failed']} failed, {counts['refused']} refused",
        f"downtime p50 {show(downtime['p50'], ' ms')}, p99 {show(downtime['p99'], ' ms')}, "
        f"max {show(downtime['max'], ' ms')}",
        f"max |counter error|: offset methods {show(errors['offset_methods'], ' ticks')}, "
        f"BY_VALUE {show(errors['by_value'], ' ticks')} (by value, guest time stalls for the downtime)",
        "",
    ]
    methods = get("by_method")
    refused = get("refused_by_method")
    rows: list[list[object]] = []
    for name, raw in methods.items():
        assert isinstance(raw, dict)
        rows.append(
            [
                name,
                raw["succeeded"],
                raw["failed"],
                "-",
                raw["downtime_ms_p50"],
                raw["downtime_ms_p99"],
                raw["max_abs_counter_error_ticks"],
            ]
        )
    for name, count in refused.items():
        rows.append([name, "-", "-", count, None, None, None])
    lines.append(
        views.table(
            ("METHOD", "SUCCEEDED", "FAILED", "REFUSED", "DOWNTIME P50 MS", "P99 MS", "MAX |ERR| TICKS"), rows
        )
    )
    lossy = summary.get("moved_with_state_loss")
    if isinstance(lossy, list) and lossy:
        lines.append(
            f"{len(lossy)} move(s) lost a guest's physical timer (a pre-6.4 kernel cannot carry it): "
            + ", ".join(f"{x['guest_id']} ({x['migration_id']})" for x in lossy)
        )
    by_code = get("refused_by_code")
    if by_code:
        lines.append("refusals: " + ", ".join(f"{code} x{n}" for code, n in by_code.items()))
    lines.append("")
    guests = summary["guests"]
    assert isinstance(guests, list)
    lines.append(
        views.table(
            (
                "GUEST",
                "NODE",
                "VCPUS",
                "PTIMER",
                "MIGRATIONS",
                "MIN STEP",
                "IRQS RECEIVED/EXPECTED",
                "MAX LATE TICKS",
            ),
            (
                (
                    g["guest_id"],
                    g["node_id"],
                    g["vcpus"],
                    "yes" if g["use_ptimer"] else "no",
                    g["migrations"],
                    g.get("min_step", "?"),
                    f"{g.get('interrupts_received', '?')}/{g.get('interrupts_expected', '?')}",
                    g.get("max_lateness_ticks", "?"),
                )
                for g in guests
            ),
        )
    )
    verdict = (
        "every guest counter monotonic" if summary["all_min_steps_non_negative"] else "COUNTER WENT BACKWARDS"
    )
    stopped = (
        "node processes stopped" if summary["node_processes_stopped"] else "SOME NODE PROCESSES DID NOT STOP"
    )
    lines += ["", f"{verdict}; {stopped}"]
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------


def configure_up_logging(level: str, log_file: TextIO | None) -> None:
    """JSON lines to --log-file; without one, only errors reach stderr (the view owns the terminal)."""
    import logging

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[(level if log_file is not None else "error").upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=log_file or sys.stderr),
        cache_logger_on_first_use=True,
    )


async def wait_for_stop(stop: asyncio.Event, duration: float | None) -> None:
    if duration is None:
        await stop.wait()
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), duration)
    stop.set()


def client_address(listen: str, port: int) -> str:
    """Where a client on this machine reaches a server bound to `listen` on `port`."""
    host = listen.rpartition(":")[0]
    return f"{'127.0.0.1' if host in ('', '0.0.0.0', '[::]') else host}:{port}"


async def run_up(args: argparse.Namespace, log_file: TextIO | None, record_file: TextIO | None) -> int:
    stop = asyncio.Event()
    cleaning = False
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()

    def on_signal() -> None:
        if stop.is_set() and not cleaning and main_task is not None:
            main_task.cancel()  # second Ctrl-C: skip the waiting, go straight to the clean-up
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)

    telemetry_stack = contextlib.AsyncExitStack()
    try:
        telemetry = await telemetry_stack.enter_async_context(local_telemetry(args))
    except ValueError as err:  # --mqtt options
        print(f"kvmtimer up: {err}", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    plans = node_plans(args.nodes, args.skew)
    nodes: list[NodeProcess] = []
    cluster = Cluster(health_interval_s=1.0)
    server, port, health_servicer = build_server(cluster, args.listen)
    address = client_address(args.listen, port)
    channel = grpc.aio.insecure_channel(address)
    demo = Demo(args, cpb_grpc.ControllerStub(channel), address, rng)
    background: list[asyncio.Task[None]] = []
    final: tuple[list[cpb.Migration], list[cpb.Guest]] | None = None
    try:
        await server.start()
        await mark_serving(health_servicer)
        print(
            f"kvmtimer up: starting {args.nodes} nodes and {args.guests} guests; controller at {address}\n"
            f"  meanwhile try: kvmtimer nodes --controller {address}\n{telemetry.banner()}",
            flush=True,
        )
        telemetry.start_mqtt(cluster, address)
        spawned = await asyncio.gather(
            *(spawn_node(p, log_file, telemetry.node_args()) for p in plans), return_exceptions=True
        )
        nodes = [n for n in spawned if isinstance(n, NodeProcess)]
        failures = [e for e in spawned if isinstance(e, BaseException)]
        if failures:
            raise failures[0]
        for n in nodes:
            print(
                f"  node {n.plan.node_id} at {n.address}: ecv{n.plan.ecv} {'VHE' if n.plan.vhe else 'nVHE'} "
                f"{n.plan.api_profile.name}"
            )
            await demo.stub.RegisterNode(
                cpb.RegisterNodeRequest(node_id=n.plan.node_id, address=n.address), timeout=RPC_TIMEOUT_S
            )
        await telemetry.nodes_changed()
        telemetry.start_recording(cluster, record_file, str(args.record or ""))
        cluster.start()
        for g in guest_plans(args.guests, plans, rng):
            created: cpb.Guest = await demo.stub.CreateGuest(
                cpb.CreateGuestRequest(
                    guest_id=g.guest_id,
                    vcpus=g.vcpus,
                    node_id=g.node_id,
                    workload=pb.WorkloadSpec(period_ticks=PERIOD_TICKS, use_ptimer=g.use_ptimer),
                ),
                timeout=RPC_TIMEOUT_S,
            )
            print(
                f"  guest {created.guest_id} on {created.node_id}: {created.vcpus} "
                + ("vCPUs, " if created.vcpus > 1 else "vCPU, ")
                + ("virtual + physical timers" if g.use_ptimer else "virtual timer")
            )
        await demo.refresh()
        demo.started = time.monotonic()
        if args.tty:
            sys.stdout.write("\x1b[?25l\x1b[2J")  # hide the cursor, clear once
        background = [
            asyncio.create_task(demo.watch_loop(), name="watch"),
            asyncio.create_task(demo.view_loop(stop), name="view"),
            asyncio.create_task(demo.migrate_loop(stop), name="migrate"),
        ]
        await wait_for_stop(stop, args.duration)
        # Stop migrating; let the migrations in flight end.
        await background[2]
        if demo.in_flight:
            demo.say(f"stopping: waiting for {len(demo.in_flight)} migration(s) in flight")
            await asyncio.wait(list(demo.in_flight.values()), timeout=IN_FLIGHT_TIMEOUT_S)
        await background[1]
        with contextlib.suppress(grpc.aio.AioRpcError):
            await demo.refresh()
        if args.tty:
            demo.draw()
        listed: cpb.ListMigrationsResponse = await demo.stub.ListMigrations(
            cpb.ListMigrationsRequest(), timeout=RPC_TIMEOUT_S
        )
        guests: list[cpb.Guest] = [
            await demo.stub.GetGuest(cpb.GetGuestRequest(guest_id=g.guest_id), timeout=RPC_TIMEOUT_S)
            for g in demo.guests
        ]
        final = list(listed.migrations), guests
    except asyncio.CancelledError:
        print("kvmtimer up: interrupted again: stopping without a summary", file=sys.stderr)
    finally:
        cleaning = True
        if args.tty:
            sys.stdout.write("\x1b[?25h\n")
            sys.stdout.flush()
        for task in background:
            task.cancel()
        for task in [*background, *demo.in_flight.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await channel.close(None)
        await health_servicer.enter_graceful_shutdown()
        await cluster.stop()
        await telemetry.stop()  # the recording and MQTT get the last items first
        await server.stop(grace=1.0)
        codes = await asyncio.gather(*(stop_node(n) for n in nodes), return_exceptions=True)
        await telemetry_stack.aclose()  # the embedded broker outlives the nodes' final statuses
    if final is None:
        return 1
    processes: dict[str, tuple[int | None, int | None]] = {p.node_id: (None, None) for p in plans}
    for n, code in zip(nodes, codes, strict=True):
        processes[n.plan.node_id] = (n.proc.pid, code if isinstance(code, int) else None)
    summary = build_summary(demo, *final, processes)
    summary["telemetry"] = telemetry.summary()
    print(summary_text(summary))
    print("SUMMARY " + json.dumps(summary, sort_keys=True), flush=True)
    return 0


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return number


def _count(minimum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        number = int(value)
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return number

    return parse


def add_up_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--duration", type=_positive_float, default=None, metavar="S", help="stop by itself after S seconds"
    )
    parser.add_argument(
        "--nodes", type=_count(2), default=4, metavar="N", help="node processes to start (default 4)"
    )
    parser.add_argument(
        "--guests", type=_count(1), default=6, metavar="G", help="guests to create (default 6)"
    )
    parser.add_argument(
        "--interval",
        type=_positive_float,
        default=1.0,
        metavar="S",
        help="seconds between migrations (default 1.0)",
    )
    parser.add_argument(
        "--skew",
        type=int,
        default=0,
        metavar="NS",
        help="give the nodes' realtimes deliberate skews: node-1 0, node-2 +NS, node-3 -NS, node-4 +2NS, ...",
    )
    parser.add_argument(
        "--record",
        type=Path,
        default=None,
        metavar="FILE",
        help="write every telemetry item to FILE (JSONL: samples, migration events, node health)",
    )
    add_local_telemetry_arguments(parser)
    parser.add_argument(
        "--listen",
        type=host_port,
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="controller HOST:PORT (default 127.0.0.1:0)",
    )
    parser.add_argument(
        "--seed", type=int, default=None, metavar="SEED", help="random seed (guest sizes, migration choices)"
    )
    parser.add_argument(
        "--log-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="write controller and node logs (JSON) here",
    )
    parser.add_argument(
        "--log-level", default="info", metavar="LEVEL", help="level for --log-file (default info)"
    )


def run(args: argparse.Namespace) -> int:
    args.tty = sys.stdout.isatty()
    with contextlib.ExitStack() as files:
        try:
            log_file = (
                files.enter_context(open(args.log_file, "a", encoding="utf-8")) if args.log_file else None
            )
            record_file = (
                files.enter_context(open(args.record, "w", encoding="utf-8")) if args.record else None
            )
        except OSError as err:
            print(f"kvmtimer up: {err}", file=sys.stderr)
            return 2
        configure_up_logging(args.log_level, log_file)
        try:
            return asyncio.run(run_up(args, log_file, record_file))
        except (RuntimeError, OSError, grpc.aio.AioRpcError) as err:
            message = (
                f"{err.code().name}: {err.details()}" if isinstance(err, grpc.aio.AioRpcError) else str(err)
            )
            print(f"kvmtimer up: {message}", file=sys.stderr)
            return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvmtimer up", description=__doc__)
    add_up_arguments(parser)
    return run(parser.parse_args(argv))
