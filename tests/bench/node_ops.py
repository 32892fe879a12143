"""Node throughput benchmark: `python tests/bench/node_ops.py [--seconds N] [--vcpus N]`.

Prints one table. Every gRPC figure is measured against an in-process grpc.aio node
server on 127.0.0.1 (ephemeral port) running in the SAME process and event loop as the
client, with one call in flight, so client and server share one CPU; figures read best
as ratios to the same run's gRPC health-check round trip (the reference row):

- health Check round trip (reference)
- unary GetOneReg / SetOneReg, one register per call (ops/s)
- batched GetRegs / SetRegs, VCPUS x 6 timer registers per call (registers/s;
  goal >= 100k registers/s)
- guest reads in the core alone: Vm.guest_read(CNTVCT_EL0) in a loop, no gRPC

Each row runs for --seconds (default 2; about 13 s in total) after a short warm-up, split
into 5 slices; the best slice is reported (other load on the machine only slows a slice).
The node is simulated (VHE, ECV=2, VM_COUNTER_OFFSET profile, 25 MHz), so the clock
does not move during the run.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kvmtimer.v1 import node_pb2 as pb
from kvmtimer.v1 import node_pb2_grpc

from controller.cli.views import table
from node.core.clock import ManualClock
from node.core.features import ApiProfile, ClockMode, EcvLevel, HostFeatures
from node.core.host import Host
from node.core.uapi import OneReg
from node.core.vcpu import SysReg
from node.service.server import build_server, mark_serving

BATCH_GOAL_REGS_PER_S = 100_000
REGS_PER_VCPU = (
    OneReg.TIMER_CTL,
    OneReg.TIMER_CVAL,
    OneReg.TIMER_CNT,
    OneReg.PTIMER_CTL,
    OneReg.PTIMER_CVAL,
    OneReg.PTIMER_CNT,
)


@dataclass(frozen=True, slots=True)
class Row:
    """One measured line of the table."""

    name: str  # what was measured
    rate: Rate  # calls (or loop iterations) per second, CPU cost per call
    items_per_call: int  # registers (or reads) per call
    unit: str  # what an item is

    @property
    def calls_per_s(self) -> float:
        return self.rate.calls_per_s

    @property
    def items_per_s(self) -> float:
        return self.calls_per_s * self.items_per_call


SLICES = 5  # each row reports its best slice: noise from other processes only ever slows a run


@dataclass(frozen=True, slots=True)
class Rate:
    """Best slice of one measurement."""

    calls_per_s: float  # wall-clock rate of the fastest slice
    cpu_us_per_call: float  # process CPU time per call (all threads), lowest slice


def best_of(slices: list[tuple[int, float, float]]) -> Rate:
    """(calls, wall s, cpu s) per slice -> best wall rate and lowest CPU cost per call."""
    return Rate(
        calls_per_s=max(n / wall for n, wall, _ in slices),
        cpu_us_per_call=min(cpu / n for n, _, cpu in slices) * 1e6,
    )


async def rate(call: Callable[[], Awaitable[object]], seconds: float) -> Rate:
    """`call` repeated sequentially, one in flight: SLICES timed slices after a warm-up."""
    warm_until = time.perf_counter() + min(0.2, seconds / 5)
    while time.perf_counter() < warm_until:
        await call()
    slices = []
    for _ in range(SLICES):
        n = 0
        start, cpu_start = time.perf_counter(), time.process_time()
        deadline = start + seconds / SLICES
        while True:
            for _ in range(8):
                await call()
            n += 8
            now = time.perf_counter()
            if now >= deadline:
                slices.append((n, now - start, time.process_time() - cpu_start))
                break
    return best_of(slices)


def core_guest_reads(host: Host, vm_id: str, seconds: float) -> Rate:
    """Vm.guest_read(CNTVCT_EL0) in a tight loop: the emulation core with no gRPC."""
    vm = host.vm(vm_id)
    vcpu = vm.vcpu(0)
    read = vm.guest_read
    reg = SysReg.CNTVCT_EL0
    slices = []
    for _ in range(SLICES):
        n = 0
        start, cpu_start = time.perf_counter(), time.process_time()
        deadline = start + seconds / SLICES
        while True:
            for _ in range(1000):
                read(vcpu, reg)
            n += 1000
            now = time.perf_counter()
            if now >= deadline:
                slices.append((n, now - start, time.process_time() - cpu_start))
                break
    return best_of(slices)


async def measure(seconds: float, vcpus: int) -> list[Row]:
    features = HostFeatures(
        ecv=EcvLevel.CNTPOFF, vhe=True, api_profile=ApiProfile.VM_COUNTER_OFFSET, cntfrq_hz=25_000_000
    )
    host = Host("bench", features, ManualClock(), counter_base=10**9, clock_mode=ClockMode.SIMULATED)
    vm = host.create_vm("bench-vm")
    for index in range(vcpus):
        vm.create_vcpu(index)

    server, port, health_servicer = build_server(host)
    await server.start()
    await mark_serving(health_servicer)
    rows: list[Row] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = node_pb2_grpc.NodeStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            check = health_pb2.HealthCheckRequest(service="")
            get_one = pb.GetOneRegRequest(vm_id="bench-vm", vcpu_index=0, reg_id=OneReg.TIMER_CNT)
            set_one = pb.SetOneRegRequest(
                vm_id="bench-vm", vcpu_index=0, reg_id=OneReg.TIMER_CVAL, value=0xDEADBEEF
            )
            get_regs = pb.GetRegsRequest(
                vm_id="bench-vm",
                regs=[pb.RegValue(vcpu_index=i, reg_id=r) for i in range(vcpus) for r in REGS_PER_VCPU],
            )
            set_regs = pb.SetRegsRequest(
                vm_id="bench-vm",
                regs=[
                    pb.RegValue(vcpu_index=i, reg_id=r, value=v)
                    for i in range(vcpus)
                    for r, v in zip(REGS_PER_VCPU, (0x1, 5000, 4000, 0x3, 6000, 4000), strict=True)
                ],
            )
            batch = len(get_regs.regs)

            rows.append(
                Row(
                    "gRPC health Check (reference)",
                    await rate(lambda: health.Check(check), seconds),
                    1,
                    "call",
                )
            )
            rows.append(
                Row("GetOneReg, unary", await rate(lambda: stub.GetOneReg(get_one), seconds), 1, "reg")
            )
            rows.append(
                Row("SetOneReg, unary", await rate(lambda: stub.SetOneReg(set_one), seconds), 1, "reg")
            )
            rows.append(
                Row(
                    f"GetRegs, {vcpus} vCPUs x {len(REGS_PER_VCPU)} regs",
                    await rate(lambda: stub.GetRegs(get_regs), seconds),
                    batch,
                    "reg",
                )
            )
            rows.append(
                Row(
                    f"SetRegs, {vcpus} vCPUs x {len(REGS_PER_VCPU)} regs",
                    await rate(lambda: stub.SetRegs(set_regs), seconds),
                    batch,
                    "reg",
                )
            )
    finally:
        await server.stop(grace=None)
    rows.append(
        Row(
            "core Vm.guest_read(CNTVCT_EL0), no gRPC",
            core_guest_reads(host, "bench-vm", seconds),
            1,
            "read",
        )
    )
    return rows


def format_table(rows: list[Row], seconds: float) -> str:
    reference = rows[0].calls_per_s
    lines = [
        "kvmtimer node benchmark: in-process grpc.aio server on 127.0.0.1, same process and event loop",
        f"as the client, one call in flight, {seconds:g} s per row (best of {SLICES} slices);",
        "ratios are items/s over the health check calls/s of the same run; cpu = process CPU time",
        "(client + server, all threads) per call in the cheapest slice, less sensitive to other load.",
        "",
    ]
    head, *body = table(
        ("measurement", "calls/s", "items/call", "items/s", "unit", "x health", "cpu us/call"),
        [
            (
                row.name,
                f"{row.calls_per_s:,.0f}",
                row.items_per_call,
                f"{row.items_per_s:,.0f}",
                row.unit,
                f"{row.items_per_s / reference:.2f}",
                f"{row.rate.cpu_us_per_call:,.2f}",
            )
            for row in rows
        ],
        numbers_right=True,
    ).split("\n")
    rule = "-" * max(len(head), *(len(line) for line in body))
    lines += [head, rule, *body, rule]
    lines.append(f"health check round trip: {1e6 / reference:,.1f} us")
    batched = {
        row.name.split(",")[0]: row.items_per_s for row in rows if row.name.startswith(("GetRegs", "SetRegs"))
    }
    met = all(v >= BATCH_GOAL_REGS_PER_S for v in batched.values())
    lines.append(
        f"batched goal >= {BATCH_GOAL_REGS_PER_S:,} registers/s: {'MET' if met else 'NOT MET'} ("
        + ", ".join(f"{name} {value:,.0f}/s" for name, value in batched.items())
        + ")"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per row (default 2)")
    parser.add_argument(
        "--vcpus", type=int, default=64, help="vCPUs per batched call, 6 regs each (default 64)"
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0 or not 1 <= args.vcpus <= 512:
        parser.error("--seconds must be > 0 and --vcpus in 1..512")
    rows = asyncio.run(measure(args.seconds, args.vcpus))
    print(format_table(rows, args.seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
