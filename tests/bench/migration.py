"""Live-migration benchmark: `python tests/bench/migration.py [--quick] [--migrations N] [--rounds N]`.

Run it from the repository root with the project's environment (e.g.
`/tmp/venv/bin/python tests/bench/migration.py`); about 60 s by default on a 2-core
machine, under 30 s with `--quick` (fewer migrations, one unthrottled round, shorter
ring fill). It starts real `kvmtimer node` processes
(realtime clock, 25 MHz, listening on 127.0.0.1 ephemeral ports) and drives them from
an in-process controller `Cluster`, exactly as `kvmtimer controller` would, and prints:

1. Reference: the gRPC round trip from the controller's own NodeClient to a node
   (GetClock, and the standard health Check), p50/p90/p99 over a few hundred sequential
   calls taken before and between the migration rounds of table 2, with the same guests
   running. GetClock p50 is "the RTT" every ratio below is relative to.
2. Downtime per method and guest size: one guest of 1, 4 and 16 vCPUs per method,
   migrated back and forth N times between two nodes of that method's API profile (one
   ECV=2 VHE, one ECV=0 nVHE), one migration at a time, the rows interleaved. Downtime is
   what the controller records (MigrationRecord.downtime_us): the guest's own stop, from
   its pause reading on the source to its resume reading on the destination (the machine's
   CLOCK_REALTIME, one clock here), never negative and bounded by the source node's counter
   from its pause to a read right after the resume. setup_time
   is the controller's monotonic clock from the request to "target ready"; total_time
   from the request to the end of cleanup (it includes the post-migration reads). A
   "4 small" what-if row per method migrates a 4-vCPU guest with a 10 s timer, whose
   sample ring stays nearly empty.
   2a: the guest counter error (the guest's own measurement of its counter jump over the
   stop minus the real time that passed) per method, and the goal: downtime p50 <= 2 RTT
   for 4-vCPU guests. 2b splits each downtime into its legs using controller-side
   timestamps (CLOCK_REALTIME, comparable with the nodes'); 2c is the node-side CPU cost of
   the two downtime batches, measured in-process with no gRPC transport.
4. Skew sweep: a guest moved between two VM_COUNTER_OFFSET nodes (and two VCPU_OFFSETS
   nodes) whose destination runs with a deliberate realtime skew (Node.SetClockEffects):
   the error equals the skew in ticks (spec §4.4, case 39); a destination behind by more
   than the stop is clamped (credited 0: the guest never goes backwards).
5. Counter error over every realtime migration of the run with no skew injected (tables
   2, 3 and the sweep's return legs): max |error| per method next to the goal (offset
   methods <= 1 tick).
3. Throughput: 100 one-vCPU guests (timer period 100 ms) spread over 8 node processes of
   mixed profiles, all migrated at once (asyncio.gather of Cluster.migrate(wait=True),
   Method.AUTO, each to another node in a ring) for a few rounds with limits high enough
   not to throttle, then one round under KubeVirt's default limits (5 in the cluster, 2
   outbound per node).

The guests of table 2 run the controller's default workload (100 Hz per vCPU) and are
given time to fill their sample rings (256 readings per vCPU, which travel with the
guest) before being measured, so the migrated state is at its steady-state size.
Other work on the machine slows every figure; the header prints the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kvmtimer.v1 import node_pb2 as pb

from controller.cli.views import percentile
from controller.cli.views import table as views_table
from controller.clients.node import NodeClient
from controller.core.migration import Limits, Method, MigrationRecord, Phase
from controller.service.cluster import Cluster
from node.core.clock import NS_PER_S, ManualClock
from node.core.features import ApiProfile, ClockMode, EcvLevel, HostFeatures
from node.core.host import Host
from node.core.uapi import OneReg
from node.core.workload import MAX_SAMPLES, WorkloadSpec
from node.core.world import advance_hosts
from node.runtime.logs import configure_logging
from node.service.servicer import NodeServicer
from tests.support.nodes import NodeProcess, node_process

CNTFRQ_HZ = 25_000_000
TICKS_PER_US = CNTFRQ_HZ // 1_000_000
SIZES = (1, 4, 16)  # vCPUs per guest in table 2
GOAL_VCPUS = 4
GOAL_RTTS = 2.0  # downtime p50 <= 2 round trips for 4 vCPUs
METHODS = (Method.BY_VALUE, Method.VCPU_OFFSETS, Method.VM_COUNTER_OFFSET)
DEFAULT_PERIOD_S = 0.01  # Cluster.create_guest's default workload: 100 Hz
RING_FILL_S = MAX_SAMPLES * DEFAULT_PERIOD_S + 0.2  # time for a fresh guest's sample ring to fill
THROUGHPUT_GUESTS = 100
THROUGHPUT_NODES = 8
THROUGHPUT_PERIOD_TICKS = 2_500_000  # 100 ms: keeps 100 guests from swamping 2 cores
SMALL_STATE_PERIOD_TICKS = 10 * CNTFRQ_HZ  # what-if guest: a 10 s timer, so its ring stays nearly empty
UNTHROTTLED = Limits(parallel=10_000, outbound_per_node=10_000)


# --- small helpers -----------------------------------------------------------


def pct(values: Sequence[float], p: float) -> float:
    """The p-th percentile (views.percentile: statistics.quantiles, inclusive); NaN when empty."""
    value = percentile(values, p / 100)
    return math.nan if value is None else value


def fmt(value: float, digits: int = 0) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


def table(
    title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], notes: Sequence[str] = ()
) -> str:
    """Titled plain-text table (views.table): first column left-aligned, the others right-aligned."""
    head, *body = views_table(headers, rows, numbers_right=True).split("\n")
    rule = "-" * max(len(head), *(len(line) for line in body))
    return "\n".join([title, rule, head, rule, *body, rule, *notes]) + "\n"


@dataclass(frozen=True, slots=True)
class NodeSpec:
    node_id: str
    profile: ApiProfile
    ecv: int
    vhe: bool

    def args(self) -> list[str]:
        args = ["--node-id", self.node_id, "--clock", "realtime", "--cntfrq", str(CNTFRQ_HZ)]
        args += ["--api-profile", self.profile.name, "--ecv", str(self.ecv)]
        return [*args, "--vhe"] if self.vhe else args

    @property
    def label(self) -> str:
        return f"{self.profile.name} ECV{self.ecv} {'VHE' if self.vhe else 'nVHE'}"


def method_nodes(method: Method) -> tuple[NodeSpec, NodeSpec]:
    """Two nodes of the method's API profile: ECV=2 VHE and ECV=0 nVHE."""
    profile = ApiProfile(int(method))
    name = method.name.lower().replace("_", "-")
    return NodeSpec(f"{name}-a", profile, 2, True), NodeSpec(f"{name}-b", profile, 0, False)


def all_node_specs() -> list[NodeSpec]:
    specs = [spec for m in METHODS for spec in method_nodes(m)]
    specs += [
        NodeSpec("extra-a", ApiProfile.VM_COUNTER_OFFSET, 1, False),
        NodeSpec("extra-b", ApiProfile.VCPU_OFFSETS, 2, False),
    ]
    assert len(specs) == THROUGHPUT_NODES
    return specs


@contextlib.contextmanager
def node_processes(specs: Sequence[NodeSpec]) -> Iterator[dict[str, str]]:
    """Start every node process at once (each takes ~1 s to import); yield node_id -> address."""
    managers = [node_process(spec.args()) for spec in specs]
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(len(managers)) as pool:
        futures = [pool.submit(cm.__enter__) for cm in managers]
        started: list[NodeProcess] = []
        errors: list[BaseException] = []
        for cm, fut in zip(managers, futures, strict=True):
            err = fut.exception()
            if err is None:
                started.append(fut.result())
                stack.push(cm.__exit__)
            else:
                errors.append(err)
        if errors:
            raise errors[0]

        def signal_all() -> None:  # stop them in parallel; each __exit__ then only waits
            for proc in started:
                if proc.proc.poll() is None:
                    proc.proc.terminate()

        stack.callback(signal_all)
        yield {spec.node_id: proc.address for spec, proc in zip(specs, started, strict=True)}


# --- 1. reference round trip ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rtt:
    name: str
    samples_us: list[float]

    @property
    def p50(self) -> float:
        return pct(self.samples_us, 50)


async def rtt_samples(
    clients: Sequence[NodeClient], calls: int, *, warm_up: int = 0
) -> tuple[list[float], ...]:
    """Sequential GetClock and health Check round trips (us), round-robin over the clients."""

    async def timed(call: Callable[[NodeClient], Awaitable[object]]) -> list[float]:
        for client in clients:  # connections up, code paths hot
            for _ in range(warm_up):
                await call(client)
        out = []
        for n in range(calls):
            client = clients[n % len(clients)]
            t0 = time.perf_counter_ns()
            await call(client)
            out.append((time.perf_counter_ns() - t0) / 1000)
        return out

    return await timed(lambda c: c.get_clock()), await timed(lambda c: c.check_health())


# --- 2. downtime ----------------------------------------------------------------


@dataclass(slots=True)
class CallLog:
    """Controller-side timestamps of the node calls of the migration in progress."""

    events: list[tuple[str, str, int, int]] = field(default_factory=list)  # (node, what, sent, received)

    def instrument(self, client: NodeClient) -> None:
        """Wrap one client's batch/get_clock so each call logs (CLOCK_REALTIME) send and reply times."""
        batch, get_clock = client.batch, client.get_clock

        async def timed_batch(calls: Sequence[pb.BatchCall]) -> list[pb.BatchResult]:
            kinds = ",".join(str(c.WhichOneof("call")) for c in calls)
            sent = time.time_ns()
            result = await batch(calls)
            self.events.append((client.node_id, kinds, sent, time.time_ns()))
            return result

        async def timed_get_clock() -> tuple[int, int]:
            sent = time.time_ns()
            result = await get_clock()
            self.events.append((client.node_id, "get_clock", sent, time.time_ns()))
            return result

        setattr(client, "batch", timed_batch)  # noqa: B010 - instance patch, bench only
        setattr(client, "get_clock", timed_get_clock)  # noqa: B010


LEGS = ("src tail+reply", "ctl", "dst request+apply")


def downtime_legs(record: MigrationRecord, events: list[tuple[str, str, int, int]]) -> list[float] | None:
    """Split source-pause -> destination-resume into legs (us); None if the calls are not found."""
    assert record.paused_realtime_ns is not None and record.resumed_realtime_ns is not None
    src = next((e for e in events if e[0] == record.source and e[1].startswith("pause_vm")), None)
    dst = next((e for e in events if e[0] == record.destination and e[1].endswith("resume_vm")), None)
    if src is None or dst is None:
        return None
    legs = [src[3] - record.paused_realtime_ns, dst[2] - src[3], record.resumed_realtime_ns - dst[2]]
    return [v / 1000 for v in legs]


@dataclass(slots=True)
class Series:
    method: Method
    vcpus: int
    small: bool = False  # the what-if guest: an almost empty sample ring
    records: list[MigrationRecord] = field(default_factory=list)
    legs: list[list[float]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.vcpus} small" if self.small else str(self.vcpus)

    def us(self, name: str) -> list[float]:
        return [float(getattr(r, name)()) for r in self.records]


async def run_downtime(
    cluster: Cluster, migrations: int, calls: CallLog, fill_s: float
) -> tuple[list[Series], list[Rtt]]:
    """Every guest migrated back and forth `migrations` times, interleaved round by round so
    that whatever else the machine does slows every row alike; RTT samples between rounds."""
    series: list[tuple[Series, str]] = []
    for method in METHODS:
        a, _ = method_nodes(method)
        name = method.name.lower().replace("_", "-")
        for n in SIZES:
            guest = await cluster.create_guest(f"{name}-{n}vcpu", n, node_id=a.node_id)
            series.append((Series(method, n), guest.guest_id))
        small = WorkloadSpec(period_ticks=SMALL_STATE_PERIOD_TICKS)
        guest = await cluster.create_guest(f"{name}-{GOAL_VCPUS}vcpu-small", GOAL_VCPUS, small, a.node_id)
        series.append((Series(method, GOAL_VCPUS, small=True), guest.guest_id))
    await asyncio.sleep(fill_s)  # let the sample rings fill (steady-state guest memory size)
    clients = [cluster.clients[n] for n in cluster.nodes]
    get_clock, health = await rtt_samples(clients, 100, warm_up=20)
    for i in range(migrations):
        for s, guest_id in series:
            a, b = method_nodes(s.method)
            calls.events.clear()
            record = await cluster.migrate(
                guest_id, b.node_id if i % 2 == 0 else a.node_id, s.method, wait=True
            )
            if record.phase is not Phase.SUCCEEDED:
                raise RuntimeError(f"migration {record.migration_id} failed: {record.reason}")
            s.records.append(record)
            legs = downtime_legs(record, calls.events)
            if legs is not None:
                s.legs.append(legs)
            await asyncio.sleep(0.002)  # let the guest run a little on its new node
        more_clock, more_health = await rtt_samples(clients, 10)
        get_clock += more_clock
        health += more_health
    for _, guest_id in series:
        await cluster.destroy_guest(guest_id)
    rtts = [Rtt("GetClock (unary Node RPC)", get_clock), Rtt("health Check", health)]
    return [s for s, _ in series], rtts


# --- 2c. node-side cost of the downtime batches, in-process --------------------


@dataclass(frozen=True, slots=True)
class NodeCost:
    vcpus: int
    src_us: float  # source Batch handler: pause, GetRegs, SaveWorkload
    src_ser_us: float  # serialising its response
    src_bytes: int
    dst_parse_us: float  # parsing the destination request
    dst_us: float  # destination Batch handler: SetRegs, SetCounterOffset, LoadWorkload, Resume
    dst_bytes: int
    save_us: float  # of src_us: SaveWorkload alone (core save + to protobuf)
    load_us: float  # of dst_us: LoadWorkload alone (from protobuf + core load)


def best_us(fn: Callable[[], object], repeat: int) -> float:
    """Fastest of `repeat` timings in us (after one warm-up): the CPU cost without interference."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t0) / 1000)
    return min(times)


def run_handler(coro: Awaitable[Any]) -> Any:
    """Drive a servicer coroutine synchronously (the handlers used here never suspend)."""
    task = cast(Any, coro)
    try:
        task.send(None)
    except StopIteration as stop:
        return stop.value
    task.close()
    raise RuntimeError("handler suspended")


def node_costs(repeat: int) -> list[NodeCost]:
    """Run the source and destination downtime batches straight into NodeServicers."""
    return [node_cost(n, repeat) for n in SIZES]


def node_cost(n: int, repeat: int) -> NodeCost:
    clock = ManualClock()
    features = HostFeatures(cntfrq_hz=CNTFRQ_HZ, ecv=EcvLevel.CNTPOFF, vhe=True)
    day = 86_400 * CNTFRQ_HZ
    src_host = Host("src", features, clock, counter_base=10 * day, clock_mode=ClockMode.SIMULATED)
    dst_host = Host("dst", features, clock, counter_base=20 * day, clock_mode=ClockMode.SIMULATED)
    src, dst = NodeServicer(src_host), NodeServicer(dst_host)
    ctx = cast(Any, None)  # only used to abort on errors, and there are none
    run = run_handler

    vm_id = f"g{n}"
    src_vm = src_host.create_vm(vm_id)
    for i in range(n):
        src_vm.create_vcpu(i)
    src_vm.start_workload(WorkloadSpec(period_ticks=CNTFRQ_HZ // 100))
    src_vm.resume()
    advance_hosts([src_host], clock, int(RING_FILL_S * NS_PER_S))  # fill the sample rings
    # Every register the source kernel lists, on every vCPU (what the controller saves).
    entries = [(i, reg) for i in range(n) for reg in src_vm.reg_list(0)]
    src_req = pb.BatchRequest(
        calls=[
            pb.BatchCall(pause_vm=pb.PauseVmRequest(vm_id=vm_id)),
            pb.BatchCall(
                get_regs=pb.GetRegsRequest(
                    vm_id=vm_id, regs=[pb.RegValue(vcpu_index=i, reg_id=r) for i, r in entries]
                )
            ),
            pb.BatchCall(save_workload=pb.SaveWorkloadRequest(vm_id=vm_id)),
        ]
    )
    src_resp: pb.BatchResponse = run(src.Batch(src_req, ctx))
    src_us = best_us(lambda: run(src.Batch(src_req, ctx)), repeat)
    save_req = pb.SaveWorkloadRequest(vm_id=vm_id)
    save_us = best_us(lambda: run(src.SaveWorkload(save_req, ctx)), repeat)
    src_wire = src_resp.SerializeToString()
    src_ser_us = best_us(src_resp.SerializeToString, repeat)

    regs = src_resp.results[1].get_regs.regs
    dst_vm = dst_host.create_vm(vm_id)
    for i in range(n):
        dst_vm.create_vcpu(i)
    state = src_resp.results[2].save_workload
    dst_req = pb.BatchRequest(
        calls=[
            pb.BatchCall(
                set_regs=pb.SetRegsRequest(
                    vm_id=vm_id,
                    regs=[
                        pb.RegValue(vcpu_index=r.vcpu_index, reg_id=r.reg_id, value=r.value)
                        for r in regs
                        if r.reg_id not in (OneReg.TIMER_CNT, OneReg.PTIMER_CNT)
                    ],
                )
            ),
            pb.BatchCall(
                set_counter_offset=pb.SetCounterOffsetRequest(
                    # the simulated clock stands still: the guest continues where it paused
                    vm_id=vm_id,
                    counter_offset=dst_host.counter.read()
                    - next(r.value for r in regs if r.reg_id == OneReg.TIMER_CNT),
                )
            ),
            pb.BatchCall(load_workload=pb.LoadWorkloadRequest(vm_id=vm_id, state=state)),
            pb.BatchCall(resume_vm=pb.ResumeVmRequest(vm_id=vm_id)),
        ]
    )
    dst_wire = dst_req.SerializeToString()
    dst_parse_us = best_us(lambda: pb.BatchRequest.FromString(dst_wire), repeat)

    def restore() -> None:
        dst_vm.pause()  # untimed share: a few us
        run(dst.Batch(dst_req, ctx))

    dst_us = best_us(restore, repeat)
    load_req = pb.LoadWorkloadRequest(vm_id=vm_id, state=state)
    dst_vm.pause()
    load_us = best_us(lambda: run(dst.LoadWorkload(load_req, ctx)), repeat)
    return NodeCost(
        n, src_us, src_ser_us, len(src_wire), dst_parse_us, dst_us, len(dst_wire), save_us, load_us
    )


# --- 4. skew sweep ------------------------------------------------------------

SKEWS_NS = (-10_000_000, -1_000_000, -10_000, -40, 0, 40, 1_000, 10_000, 1_000_000, 10_000_000)
SWEEP_METHODS = (Method.VM_COUNTER_OFFSET, Method.VCPU_OFFSETS)


@dataclass(frozen=True, slots=True)
class SweepPoint:
    method: Method
    skew_ns: int  # destination realtime minus source realtime, injected
    error_ticks: int  # the guest's own measurement
    elapsed_ticks: int  # what the destination credited


async def set_skew(cluster: Cluster, node_id: str, skew_ns: int) -> None:
    client = cluster.clients[cluster.node(node_id).node_id]
    await client.stub.SetClockEffects(pb.SetClockEffectsRequest(skew_ns=skew_ns))


async def run_skew_sweep(cluster: Cluster, repeats: int) -> tuple[list[SweepPoint], list[MigrationRecord]]:
    """Each skew: move the guest to a destination skewed by it, then back with no skew."""
    points: list[SweepPoint] = []
    unskewed: list[MigrationRecord] = []
    for method in SWEEP_METHODS:
        a, b = method_nodes(method)
        guest = await cluster.create_guest(f"sweep-{method.name.lower()}", 2, node_id=a.node_id)
        await asyncio.sleep(0.05)
        for skew in SKEWS_NS:
            for _ in range(repeats):
                await set_skew(cluster, b.node_id, skew)
                there = await cluster.migrate(guest.guest_id, b.node_id, method, wait=True)
                await set_skew(cluster, b.node_id, 0)
                back = await cluster.migrate(guest.guest_id, a.node_id, method, wait=True)
                for rec in (there, back):
                    if rec.phase is not Phase.SUCCEEDED or rec.counter_error_ticks is None:
                        raise RuntimeError(f"migration {rec.migration_id} failed: {rec.reason}")
                assert there.counter_error_ticks is not None
                points.append(SweepPoint(method, skew, there.counter_error_ticks, there.elapsed_ticks))
                unskewed.append(back)
        await cluster.destroy_guest(guest.guest_id)
    return points, unskewed


def report_skew_sweep(points: list[SweepPoint]) -> str:
    rows = []
    for method in SWEEP_METHODS:
        for skew in SKEWS_NS:
            mine = [p for p in points if p.method is method and p.skew_ns == skew]
            if not mine:
                continue
            expected = skew * CNTFRQ_HZ // NS_PER_S
            errors = [p.error_ticks for p in mine]
            exact = all(abs(e - expected) <= 1 for e in errors)
            # Behind by more than the stop: credited 0, the guest loses the stop but never goes back.
            clamped = all(p.elapsed_ticks == 0 and expected <= p.error_ticks <= 0 for p in mine)
            verdict = "MET (= skew)" if exact else "MET (clamped)" if clamped else "NOT MET"
            rows.append(
                [
                    method.name,
                    f"{skew:,}",
                    f"{expected:,}",
                    f"{min(errors):,}" if min(errors) == max(errors) else f"{min(errors):,}..{max(errors):,}",
                    f"{int(pct([float(p.elapsed_ticks) for p in mine], 50)):,}",
                    str(len(mine)),
                    verdict,
                ]
            )
    return table(
        "4. Skew sweep: counter error vs the destination's injected realtime skew (offset methods)",
        ["method", "skew ns", "skew ticks", "error ticks", "credited p50", "n", "goal: error = skew"],
        rows,
        [
            "The destination node runs with SetClockEffects(skew_ns); the guest's own measurement (counter",
            "jump over the stop minus the machine's real time) must equal skew*CNTFRQ/1e9 within 1 tick.",
            "A destination behind by more than the stop credits 0 (clamped): error in [skew, 0], never back.",
        ],
    )


def report_all_errors(groups: Sequence[Sequence[MigrationRecord]]) -> str:
    rows = []
    for method in METHODS:
        errors = [
            abs(r.counter_error_ticks)
            for group in groups
            for r in group
            if r.method is method and r.counter_error_ticks is not None
        ]
        worst = max(errors, default=0)
        offset = method is not Method.BY_VALUE
        verdict = ("MET" if worst <= 1 else "NOT MET") if offset else "n/a (minus the stop by design)"
        rows.append(
            [
                method.name,
                str(len(errors)),
                f"{worst:,}",
                fmt(worst * NS_PER_S / CNTFRQ_HZ),
                "<= 1 tick" if offset else "-",
                verdict,
            ]
        )
    return table(
        "5. Max |counter error| over every realtime migration of this run with no skew injected",
        ["method", "migrations", "max |err| ticks", "= ns", "goal", ""],
        rows,
        ["Tables 2 and 3 and the skew sweep's unskewed return legs; CNTFRQ 25 MHz."],
    )


# --- 3. throughput ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Round:
    label: str
    wall_s: float
    ok: list[MigrationRecord]
    failed: int
    methods: dict[str, int]

    @property
    def rate(self) -> float:
        return len(self.ok) / self.wall_s


async def run_throughput(cluster: Cluster, rounds: int, default_limit_round: bool) -> list[Round]:
    node_ids = list(cluster.nodes)
    spec = WorkloadSpec(period_ticks=THROUGHPUT_PERIOD_TICKS)
    await asyncio.gather(
        *(
            cluster.create_guest(f"tp-{i:03d}", 1, spec, node_id=node_ids[i % len(node_ids)])
            for i in range(THROUGHPUT_GUESTS)
        )
    )
    plan: list[tuple[str, Limits]] = [(f"round {r + 1}, unthrottled", UNTHROTTLED) for r in range(rounds)]
    if default_limit_round:
        plan.append(("KubeVirt default limits (5 / 2)", Limits()))
    out = []
    for r, (label, limits) in enumerate(plan):
        cluster.limits = limits
        shift = 1 + r % (len(node_ids) - 1)
        moves = []
        for guest in list(cluster.guests.values()):
            dst = node_ids[(node_ids.index(guest.node_id) + shift) % len(node_ids)]
            moves.append(cluster.migrate(guest.guest_id, dst, Method.AUTO, wait=True))
        t0 = time.perf_counter()
        results = await asyncio.gather(*moves, return_exceptions=True)
        wall = time.perf_counter() - t0
        records = [res for res in results if isinstance(res, MigrationRecord)]
        ok = [rec for rec in records if rec.phase is Phase.SUCCEEDED]
        methods: dict[str, int] = {}
        for rec in ok:
            name = rec.method.name if rec.method else "?"
            methods[name] = methods.get(name, 0) + 1
        out.append(Round(label, wall, ok, len(results) - len(ok), methods))
        await asyncio.sleep(0.1)
    return out


# --- report -------------------------------------------------------------------


def report_rtt(rtts: list[Rtt]) -> str:
    rows = [
        [
            r.name,
            str(len(r.samples_us)),
            fmt(pct(r.samples_us, 50)),
            fmt(pct(r.samples_us, 90)),
            fmt(pct(r.samples_us, 99)),
        ]
        for r in rtts
    ]
    return table(
        "1. Reference: gRPC round trip, controller NodeClient -> node process (sequential calls)",
        ["call", "n", "p50 us", "p90 us", "p99 us"],
        rows,
        [
            "Round-robin over the 6 nodes of table 2, 100 calls before the migrations and 10 after each",
            "round of them, with the same guests running. RTT := GetClock p50 (the unary path the",
            "migration's own node calls take).",
        ],
    )


def report_downtime(series: list[Series], rtt_us: float, migrations: int) -> str:
    rows = []
    for s in series:
        down = s.us("downtime_us")
        rows.append(
            [
                s.method.name,
                s.label,
                str(len(s.records)),
                fmt(pct(down, 50)),
                fmt(pct(down, 99)),
                fmt(pct(down, 50) / rtt_us, 2),
                fmt(pct(down, 99) / rtt_us, 2),
                fmt(pct(s.us("setup_time_us"), 50)),
                fmt(pct(s.us("total_time_us"), 50)),
            ]
        )
    notes = [
        f"RTT = {rtt_us:,.0f} us. {migrations} migrations per row, back and forth between the method's",
        "two nodes, one at a time, rows interleaved round by round.",
        f"'{GOAL_VCPUS} small' (what-if): a {GOAL_VCPUS}-vCPU guest whose timer period is "
        f"{SMALL_STATE_PERIOD_TICKS // CNTFRQ_HZ} s, so its sample",
        "ring holds only its pause/resume readings: the same path with little guest state to move.",
        "downtime = MigrationRecord.downtime_us: the guest's own pause -> resume readings (machine",
        "CLOCK_REALTIME, one clock on this machine), bounded by the source node's counter from its",
        "pause to a read right after the resume (one clock; never negative). p99 is nearest-rank.",
    ]
    return table(
        "2. Downtime per method and guest size (real node processes, realtime clocks)",
        [
            "method",
            "vCPUs",
            "n",
            "down p50 us",
            "down p99 us",
            "p50/RTT",
            "p99/RTT",
            "setup p50 us",
            "total p50 us",
        ],
        rows,
        notes,
    )


def report_goal_and_error(series: list[Series], rtt_us: float) -> str:
    rows = []
    for method in METHODS:
        mine = [s for s in series if s.method is method]
        errors = [
            abs(r.counter_error_ticks) for s in mine for r in s.records if r.counter_error_ticks is not None
        ]
        worst = max(errors, default=0)
        typical = pct(errors, 50)
        applied = sorted({r.applied_as for s in mine for r in s.records})
        goal = next(s for s in mine if s.vcpus == GOAL_VCPUS and not s.small)
        ratio = pct(goal.us("downtime_us"), 50) / rtt_us
        rows.append(
            [
                method.name,
                fmt(typical),
                fmt(typical / TICKS_PER_US, 1),
                f"{worst:,}",
                fmt(worst / TICKS_PER_US, 1),
                f"{ratio:.2f}",
                "MET" if ratio <= GOAL_RTTS else "MISSED",
                "; ".join(applied),
            ]
        )
    return table(
        f"2a. Guest counter error and the goal (downtime p50 <= {GOAL_RTTS:g} RTT for {GOAL_VCPUS} vCPUs)",
        [
            "method",
            "p50 |err| ticks",
            "= us",
            "max |err| ticks",
            "= us",
            f"{GOAL_VCPUS}-vCPU p50/RTT",
            "goal",
            "applied as",
        ],
        rows,
        [
            "err = guest-observed counter jump over the stop - real time elapsed (all sizes). BY_VALUE",
            "stalls guest time by the stop; the offset methods credit it: the destination applies the",
            "record at its own instant, and each node's (counter, realtime) pair is one clock read.",
        ],
    )


def report_legs(series: list[Series], rtt_us: float) -> str:
    rows = []
    for s in series:
        if not s.legs:
            continue
        med = [statistics.median(leg[k] for leg in s.legs) for k in range(len(LEGS))]
        rows.append(
            [s.method.name, s.label, *(fmt(v) for v in med), fmt(sum(med)), fmt(sum(med) / rtt_us, 2)]
        )
    return table(
        "2b. Where the downtime goes: median of each leg, us (controller + node CLOCK_REALTIME)",
        ["method", "vCPUs", *LEGS, "sum", "sum/RTT"],
        rows,
        [
            "src tail+reply: source pause -> its Batch reply at the controller (GetRegs, SaveWorkload,",
            "  serialise, transfer); ctl: controller work between calls; dst request+apply: restore",
            "  Batch (SetRegs, LoadWorkload, ApplyCounterRecord) sent -> resume.",
        ],
    )


def report_node_costs(costs: list[NodeCost]) -> str:
    rows = [
        [
            str(c.vcpus),
            fmt(c.src_us),
            fmt(c.save_us),
            fmt(c.src_ser_us),
            f"{c.src_bytes:,}",
            fmt(c.dst_parse_us),
            fmt(c.dst_us),
            fmt(c.load_us),
            f"{c.dst_bytes:,}",
        ]
        for c in costs
    ]
    return table(
        "2c. Node-side CPU per downtime batch, in-process (no transport), best of N, us",
        [
            "vCPUs",
            "src batch",
            "of it Save",
            "src reply ser",
            "bytes",
            "dst req parse",
            "dst batch",
            "of it Load",
            "bytes",
        ],
        rows,
        [
            f"Full sample rings ({MAX_SAMPLES} readings per vCPU); src batch = PauseVm+GetRegs+SaveWorkload,",
            "dst batch = SetRegs+SetCounterOffset+LoadWorkload+ResumeVm (a controller migration now sends",
            "ApplyCounterRecord instead of SetCounterOffset: the same ioctl after one clock read).",
        ],
    )


def report_throughput(rounds: list[Round], rtt_us: float) -> str:
    period_ms = THROUGHPUT_PERIOD_TICKS / CNTFRQ_HZ * 1000
    rows = []
    for r in rounds:
        down = [float(rec.downtime_us()) for rec in r.ok]
        total = [float(rec.total_time_us()) for rec in r.ok]
        rows.append(
            [
                r.label,
                f"{len(r.ok)}/{len(r.ok) + r.failed}",
                f"{r.wall_s:.2f}",
                fmt(r.rate, 1),
                fmt(pct(down, 50)),
                fmt(pct(down, 99)),
                fmt(pct(down, 50) / rtt_us, 1),
                fmt(pct(total, 50)),
                " ".join(f"{k}:{v}" for k, v in sorted(r.methods.items())),
            ]
        )
    return table(
        f"3. Throughput: {THROUGHPUT_GUESTS} one-vCPU guests over {THROUGHPUT_NODES} node processes, "
        "all migrated at once (Method.AUTO)",
        [
            "round",
            "ok",
            "wall s",
            "migr/s",
            "down p50 us",
            "down p99 us",
            "p50/RTT",
            "total p50 us",
            "methods",
        ],
        rows,
        [
            "Unthrottled: Limits(parallel=10000, outbound_per_node=10000); the last row uses the Limits()",
            "defaults (queued migrations wait in Pending). Downtime under load includes the wait for the",
            "busy controller and nodes (2 cores for 9 processes); total = request -> cleanup done.",
            f"Guest timer period {THROUGHPUT_PERIOD_TICKS:,} ticks ({period_ms:g} ms).",
        ],
    )


# --- main -----------------------------------------------------------------------


async def bench(addresses: dict[str, str], specs: list[NodeSpec], args: argparse.Namespace) -> None:
    t_start = time.perf_counter()
    downtime_nodes = {s.node_id for m in METHODS for s in method_nodes(m)}
    calls = CallLog()
    cluster = Cluster(health_interval_s=0)
    try:
        for spec in specs:
            if spec.node_id in downtime_nodes:
                await cluster.register_node(spec.node_id, addresses[spec.node_id])
                calls.instrument(cluster.clients[cluster.node(spec.node_id).node_id])
        series, rtts = await run_downtime(cluster, args.migrations, calls, args.fill_s)
        sweep, unskewed = await run_skew_sweep(cluster, args.sweep_repeats)
    finally:
        await cluster.stop()
    rtt_us = rtts[0].p50
    print(report_rtt(rtts))
    print(report_downtime(series, rtt_us, args.migrations))
    print(report_goal_and_error(series, rtt_us))
    print(report_legs(series, rtt_us))
    print(report_node_costs(node_costs(args.node_cost_repeat)))
    print(report_skew_sweep(sweep))
    sys.stdout.flush()

    cluster = Cluster(limits=UNTHROTTLED, health_interval_s=0, node_timeout_s=30.0)
    try:
        for spec in specs:
            await cluster.register_node(spec.node_id, addresses[spec.node_id])
        rounds = await run_throughput(cluster, args.rounds, args.default_limits)
    finally:
        await cluster.stop()
    print(report_throughput(rounds, rtt_us))
    print(report_all_errors([*(s.records for s in series), *(r.ok for r in rounds), unskewed]))
    print(f"bench time {time.perf_counter() - t_start:.1f} s (after node start-up)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer migrations and rounds (< 30 s)")
    parser.add_argument("--migrations", type=int, default=None, help="migrations per method and size (30)")
    parser.add_argument("--rounds", type=int, default=None, help="unthrottled throughput rounds (2)")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    args = parser.parse_args(argv)
    if args.migrations is None:
        args.migrations = 8 if args.quick else 30
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    if args.migrations < 2 or args.rounds < 0:
        parser.error("--migrations must be >= 2 and --rounds >= 0")
    args.default_limits = True
    args.fill_s = 0.5 if args.quick else RING_FILL_S
    args.node_cost_repeat = 20 if args.quick else 100
    args.sweep_repeats = 1 if args.quick else 3
    configure_logging("warning", json=False)  # the in-process controller's logs: stderr, problems only

    specs = all_node_specs()
    cores = os.cpu_count() or 0
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    print(f"kvmtimer migration benchmark{' (--quick)' if args.quick else ''}")
    print(
        f"machine: {cores} cores ({affinity} usable), {platform.machine()}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"load average before start: {load} (other work on the machine slows every figure)")
    print(
        f"nodes: {len(specs)} `kvmtimer node` processes, realtime clock, cntfrq {CNTFRQ_HZ:,} Hz, 127.0.0.1"
    )
    for spec in specs:
        print(f"  {spec.node_id:<22} {spec.label}")
    t0 = time.perf_counter()
    with node_processes(specs) as addresses:
        print(f"node start-up: {time.perf_counter() - t0:.1f} s\n")
        sys.stdout.flush()
        try:
            asyncio.run(asyncio.wait_for(bench(addresses, specs, args), args.timeout))
        except TimeoutError:
            print(f"benchmark did not finish within {args.timeout:g} s", file=sys.stderr)
            return 1
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"total wall time {time.perf_counter() - t0:.1f} s; load average at the end: {load}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
