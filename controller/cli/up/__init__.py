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
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import grpc
import structlog
from kvmtimer.v1 import controller_pb2 as cpb
from kvmtimer.v1 import controller_pb2_grpc as cpb_grpc
from kvmtimer.v1 import node_pb2 as pb

from controller.cli.up import live
from controller.cli.up.launch import NodeProcess, spawn_fleet, spawn_node, stop_node
from controller.cli.up.retry import Progress
from controller.cli.up.scenario import (
    RPC_TIMEOUT_S,
    Demo,
    GuestPlan,
    NodePlan,
    default_period_ticks,
    guest_plans,
    node_plans,
)
from controller.cli.up.settings import UpSettings
from controller.cli.up.summary import build_summary, lateness_by_guest, summary_text
from controller.cli.up.telemetry import add_local_telemetry_arguments, local_telemetry
from controller.service.cluster import Cluster
from controller.service.server import build_server, mark_serving
from controller.service.store import StateFileError, Store
from node.core.features import DEFAULT_CNTFRQ_HZ
from node.core.workload import MIN_PERIOD_TICKS
from node.runtime.addr import host_port, local_address
from node.runtime.logs import configure_logging
from node.runtime.options import add_log_level_argument, int_at_least, int_between, positive_float
from node.runtime.settings import command, standalone

IN_FLIGHT_TIMEOUT_S = 30.0
STOP_TASKS_TIMEOUT_S = 5.0  # the view, watch and migrate helpers get this long to end when stopping
FLEET_ABOVE = 8  # more nodes than this: fleet processes (several hosts each) instead of one per host
FLEET_HOSTS_PER_PROCESS = 25
VERBOSE_MAX = 20  # up to this many nodes/guests, one line each at start-up
CREATE_PARALLEL = 16  # CreateGuest calls in flight at once
TELEMETRY_BUDGET_HZ = 2000  # vCPU samples per second the controller collects, whole cluster


@dataclass(slots=True)
class StopTimes:
    """Seconds each stage of stopping took (the summary's `stopping_s`)."""

    seconds: dict[str, float] = field(default_factory=dict)
    _at: float | None = None

    def start(self) -> None:
        self._at = time.monotonic()

    def mark(self, stage: str) -> None:
        """`stage` ended now (nothing is recorded before start(): an interrupted start-up)."""
        if self._at is not None:
            now = time.monotonic()
            self.seconds[stage] = round(now - self._at, 3)
            self._at = now


def hosts_per_process(args: UpSettings) -> int:
    """--hosts-per-process, else one process per host for a small cluster and fleet processes
    of FLEET_HOSTS_PER_PROCESS hosts for a large one (--skew: one per host, which applies it)."""
    if args.hosts_per_process is not None:
        return args.hosts_per_process
    return 1 if args.nodes <= FLEET_ABOVE or args.skew else FLEET_HOSTS_PER_PROCESS


def health_interval_s(nodes: int) -> float:
    """Health checks every second for a small cluster, about 20 checks per second for a large one."""
    return max(1.0, nodes / 20)


def telemetry_rate_hz(vcpus: int) -> float:
    """Samples per vCPU per second: 10 Hz while the cluster stays within the budget, less beyond."""
    return min(10.0, max(0.2, TELEMETRY_BUDGET_HZ / max(1, vcpus)))


async def _start_group(
    group: list[NodePlan], per_process: int, log_file: TextIO | None, node_args: list[str], progress: Progress
) -> NodeProcess:
    n = await (
        spawn_node(group[0], log_file, node_args) if per_process == 1 else spawn_fleet(group, log_file)
    )
    progress.advance(len(group))
    return n


async def register_node(demo: Demo, node_id: str, address: str) -> None:
    request = cpb.RegisterNodeRequest(node_id=node_id, address=address)

    async def attempt(_: int) -> None:
        await demo.stub.RegisterNode(request, timeout=RPC_TIMEOUT_S)

    await demo.retrier.call(attempt)


async def get_guest(demo: Demo, guest_id: str) -> cpb.Guest:
    async def attempt(_: int) -> cpb.Guest:
        guest: cpb.Guest = await demo.stub.GetGuest(
            cpb.GetGuestRequest(guest_id=guest_id), timeout=RPC_TIMEOUT_S
        )
        return guest

    return await demo.retrier.call(attempt)


async def all_guests(demo: Demo, guest_ids: list[str], progress: Progress | None = None) -> list[cpb.Guest]:
    """GetGuest (with the guest's observations) of every guest, CREATE_PARALLEL at a time."""
    limit = asyncio.Semaphore(CREATE_PARALLEL)

    async def one(guest_id: str) -> cpb.Guest:
        async with limit:
            guest = await get_guest(demo, guest_id)
        if progress is not None:
            progress.advance()
        return guest

    guests = list(await asyncio.gather(*(one(g) for g in guest_ids)))
    if progress is not None:
        progress.finish()
    return guests


async def create_guest(demo: Demo, g: GuestPlan, period: int) -> cpb.Guest:
    """CreateGuest, retried on transient errors; a retry that finds the guest (ALREADY_EXISTS:
    the earlier attempt went through after all) returns it."""
    request = cpb.CreateGuestRequest(
        guest_id=g.guest_id,
        vcpus=g.vcpus,
        node_id=g.node_id,
        workload=pb.WorkloadSpec(period_ticks=period, use_ptimer=g.use_ptimer),
    )

    async def attempt(n: int) -> cpb.Guest:
        try:
            created: cpb.Guest = await demo.stub.CreateGuest(request, timeout=RPC_TIMEOUT_S)
            return created
        except grpc.aio.AioRpcError as err:
            if n > 0 and err.code() is grpc.StatusCode.ALREADY_EXISTS:
                found: cpb.Guest = await demo.stub.GetGuest(
                    cpb.GetGuestRequest(guest_id=g.guest_id), timeout=RPC_TIMEOUT_S
                )
                return found
            raise

    return await demo.retrier.call(attempt)


log = structlog.get_logger("kvmtimer.up")


def configure_up_logging(level: str, log_file: TextIO | None) -> None:
    """JSON lines to --log-file; without one, only errors reach stderr (the view owns the terminal)."""
    configure_logging(level if log_file is not None else "error", json=True, file=log_file)


async def wait_for_stop(stop: asyncio.Event, duration: float | None) -> None:
    if duration is None:
        await stop.wait()
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), duration)
    stop.set()


async def run_up(
    args: UpSettings, tty: bool, log_file: TextIO | None, record_file: TextIO | None, store: Store
) -> int:
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
        telemetry = await telemetry_stack.enter_async_context(local_telemetry(args.mqtt, off=args.no_mqtt))
    except ValueError as err:  # --mqtt options
        print(f"kvmtimer up: {err}", file=sys.stderr)
        return 2
    if args.skew and hosts_per_process(args) > 1:
        print(
            "kvmtimer up: --skew is applied by `kvmtimer node` processes: use --hosts-per-process 1",
            file=sys.stderr,
        )
        return 2
    rng = random.Random(args.seed)
    plans = node_plans(args.nodes, args.skew)
    nodes: list[NodeProcess] = []
    cluster = Cluster(health_interval_s=health_interval_s(args.nodes), store=store)
    cluster.load_state()
    server, port, health_servicer = build_server(cluster, args.listen)
    address = local_address(args.listen, port)
    channel = grpc.aio.insecure_channel(address)
    demo = Demo(args, tty, cpb_grpc.ControllerStub(channel), address, rng)
    background: list[asyncio.Task[None]] = []
    final: tuple[list[cpb.Migration], list[cpb.Guest]] | None = None
    stopping = StopTimes()
    try:
        await server.start()
        await mark_serving(health_servicer)
        print(
            f"kvmtimer up: starting {args.nodes} nodes and {args.guests} guests; controller at {address}\n"
            f"  meanwhile try: kvmtimer nodes --controller {address}\n{telemetry.banner()}",
            flush=True,
        )
        telemetry.start_mqtt(cluster, address)
        per_process = hosts_per_process(args)
        groups = [plans[i : i + per_process] for i in range(0, len(plans), per_process)]
        progress = Progress("hosts listening", len(plans), tty)
        spawned = await asyncio.gather(
            *(
                _start_group(group, per_process, log_file, telemetry.node_args(), progress)
                for group in groups
            ),
            return_exceptions=True,
        )
        progress.finish()
        nodes = [n for n in spawned if isinstance(n, NodeProcess)]
        failures = [e for e in spawned if isinstance(e, BaseException)]
        if failures:
            raise failures[0]
        if per_process > 1:
            print(f"  {len(plans)} hosts served by {len(nodes)} fleet processes ({per_process} hosts each)")
        verbose = len(plans) <= VERBOSE_MAX
        for n in nodes:
            for plan in n.plans:
                if verbose:
                    print(
                        f"  node {plan.node_id} at {n.address_of(plan.node_id)}: ecv{plan.ecv} "
                        f"{'VHE' if plan.vhe else 'nVHE'} {plan.api_profile.name}"
                    )
                await register_node(demo, plan.node_id, n.address_of(plan.node_id))
        await telemetry.nodes_changed()
        telemetry.start_recording(cluster, record_file, str(args.record or ""))
        cluster.start()
        gplans = guest_plans(args.guests, plans, rng)
        period = args.period_ticks or default_period_ticks(
            sum(g.vcpus * (2 if g.use_ptimer else 1) for g in gplans)
        )
        cluster.collector.rate_hz = telemetry_rate_hz(sum(g.vcpus for g in gplans))
        print(
            f"  guest timer period {period:,} ticks ({period / DEFAULT_CNTFRQ_HZ * 1000:g} ms)"
            + ("" if args.period_ticks else " (sized to the fleet; --period-ticks sets it)")
        )
        progress = Progress("guests created", len(gplans), tty)
        limit = asyncio.Semaphore(CREATE_PARALLEL)

        async def create(g: GuestPlan) -> None:
            async with limit:
                created = await create_guest(demo, g, period)
            progress.advance()
            if len(gplans) <= VERBOSE_MAX:
                print(
                    f"  guest {created.guest_id} on {created.node_id}: {created.vcpus} "
                    + ("vCPUs, " if created.vcpus > 1 else "vCPU, ")
                    + ("virtual + physical timers" if g.use_ptimer else "virtual timer")
                )

        await asyncio.gather(*(create(g) for g in gplans))
        progress.finish()
        demo.period_ticks = period
        await demo.refresh()
        # The guests' timer lateness so far (start-up: process warm-up, guests created in a
        # burst): the summary judges the load on what comes after.
        reading = Progress("guests' start-up observations read", len(gplans), tty)
        baseline = await all_guests(
            demo, [g.guest_id for g in gplans], reading if len(gplans) > VERBOSE_MAX else None
        )
        demo.lateness_baseline = lateness_by_guest(baseline)
        demo.started = time.monotonic()
        if tty:
            sys.stdout.write("\x1b[?25l\x1b[2J")  # hide the cursor, clear once
        background = [
            asyncio.create_task(demo.watch_loop(), name="watch"),
            asyncio.create_task(live.view_loop(demo, stop), name="view"),
            asyncio.create_task(demo.migrate_loop(stop), name="migrate"),
        ]
        await wait_for_stop(stop, args.duration)
        demo.stopped = time.monotonic()
        stopping.start()
        # Stop migrating; let the migrations in flight end.
        await background[2]
        if demo.in_flight:
            demo.say(f"stopping: waiting for {len(demo.in_flight)} migration(s) in flight")
            await asyncio.wait(list(demo.in_flight.values()), timeout=IN_FLIGHT_TIMEOUT_S)
        await background[1]
        stopping.mark("migrations_in_flight")
        demo.say(f"stopping: reading what the {len(demo.guests)} guests observed")
        with contextlib.suppress(grpc.aio.AioRpcError):
            await demo.refresh()
        if tty:
            live.draw(demo)
        listed = await demo.list_migrations()
        guests = await all_guests(demo, [g.guest_id for g in demo.guests])
        final = list(listed.migrations), guests
        stopping.mark("observations")
    except asyncio.CancelledError:
        print("kvmtimer up: interrupted again: stopping without a summary", file=sys.stderr)
    finally:
        cleaning = True
        if tty:
            sys.stdout.write("\x1b[?25h\n")
            sys.stdout.flush()
        for task in background:
            task.cancel()
        # Bounded: a task stuck in a call (a stream that missed its cancel) must not keep `up`
        # from stopping; closing the channel below ends whatever is left.
        leftover = [*background, *demo.in_flight.values()]
        if leftover:
            await asyncio.wait(leftover, timeout=STOP_TASKS_TIMEOUT_S)
        await channel.close(None)
        for task in leftover:
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: an error of a cancelled helper is not news
        stopping.mark("helpers")
        await health_servicer.enter_graceful_shutdown()
        await cluster.stop()
        stopping.mark("cluster")
        await telemetry.stop()  # the recording and MQTT get the last items first
        stopping.mark("telemetry")
        await server.stop(grace=1.0)
        codes = await asyncio.gather(*(stop_node(n) for n in nodes), return_exceptions=True)
        stopping.mark("node_processes")
        await telemetry_stack.aclose()  # the embedded broker outlives the nodes' final statuses
        stopping.mark("broker")
    if final is None:
        return 1
    processes: dict[str, tuple[int | None, int | None]] = {p.node_id: (None, None) for p in plans}
    for n, code in zip(nodes, codes, strict=True):
        for plan in n.plans:
            processes[plan.node_id] = (n.proc.pid, code if isinstance(code, int) else None)
    summary = build_summary(demo, *final, processes)
    summary["telemetry"] = telemetry.summary()
    summary["stopping_s"] = stopping.seconds
    print(summary_text(summary))
    print("SUMMARY " + json.dumps(summary, sort_keys=True), flush=True)
    return 0


def add_up_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--duration", type=positive_float, default=None, metavar="S", help="stop by itself after S seconds"
    )
    parser.add_argument(
        "--nodes", type=int_at_least(2), default=4, metavar="N", help="node processes to start (default 4)"
    )
    parser.add_argument(
        "--guests", type=int_at_least(1), default=6, metavar="G", help="guests to create (default 6)"
    )
    parser.add_argument(
        "--interval",
        type=positive_float,
        default=1.0,
        metavar="S",
        help="seconds between migrations (default 1.0)",
    )
    parser.add_argument(
        "--period-ticks",
        type=int_at_least(MIN_PERIOD_TICKS),
        default=None,
        metavar="TICKS",
        help="guest timer period in counter ticks (default: 10 ms, longer for large fleets)",
    )
    parser.add_argument(
        "--hosts-per-process",
        type=int_between(1, 1000),
        default=None,
        metavar="N",
        help=f"hosts served by one process: 1 = a `kvmtimer node` each, more = `kvmtimer fleet` processes "
        f"(default 1 up to {FLEET_ABOVE} nodes, else {FLEET_HOSTS_PER_PROCESS})",
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
    add_log_level_argument(parser, metavar="LEVEL", help="level for --log-file (default info)")
    parser.add_argument(
        "--state",
        type=Path,
        default=None,
        metavar="FILE",
        help="the controller's state file (default: a fresh one per run, removed at the end)",
    )


def run(args: UpSettings) -> int:
    tty = sys.stdout.isatty()
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
        # A fresh state file per run: this run's node processes are new, so an old file's
        # guests would only show up as lost.
        state = args.state or Path(files.enter_context(tempfile.TemporaryDirectory())) / "controller.db"
        try:
            store = Store.open(state)
        except StateFileError as err:
            print(f"kvmtimer up: {err.message}", file=sys.stderr)
            return err.exit_code
        files.callback(store.close)
        try:
            return asyncio.run(run_up(args, tty, log_file, record_file, store))
        except (RuntimeError, OSError, grpc.aio.AioRpcError) as err:
            message = (
                f"{err.code().name}: {err.details()}" if isinstance(err, grpc.aio.AioRpcError) else str(err)
            )
            print(f"kvmtimer up: {message}", file=sys.stderr)
            return 1


def main(argv: list[str] | None = None) -> int:
    return standalone("kvmtimer up", __doc__, add_up_arguments)(command(UpSettings, run), argv)
