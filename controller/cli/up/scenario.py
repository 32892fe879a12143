"""The scenario of `kvmtimer up`: which nodes and guests, and the migrations it keeps starting."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from kvmtimer.v1 import controller_pb2 as cpb
from kvmtimer.v1 import controller_pb2_grpc as cpb_grpc

from controller.cli import views
from controller.cli.up.retry import Retrier
from controller.cli.up.settings import UpSettings
from node.core.features import DEFAULT_CNTFRQ_HZ, ApiProfile
from node.core.fleet import fleet_host

PERIOD_TICKS = 250_000  # 10 ms at 25 MHz: the guest timer period of a small cluster
MAX_PERIOD_TICKS = 10 * DEFAULT_CNTFRQ_HZ  # 10 s
# Guest timer interrupts per second the whole demo is sized for on a 2-core machine (every
# timer of every vCPU together; tests/bench/fleet.py): beyond it the period grows.
INTERRUPT_BUDGET_HZ = 2000
LAST_MIGRATIONS = 8
RPC_TIMEOUT_S = 10.0
MIGRATE_TIMEOUT_S = 60.0


def default_period_ticks(timers: int) -> int:
    """The guest timer period `up` picks for `timers` periodic timers in the cluster: 10 ms while
    they stay within the interrupt budget, longer (at most 10 s) for larger fleets."""
    needed = -(-timers * DEFAULT_CNTFRQ_HZ // INTERRUPT_BUDGET_HZ)  # ticks for timers / budget s
    return min(MAX_PERIOD_TICKS, max(PERIOD_TICKS, -(-needed // PERIOD_TICKS) * PERIOD_TICKS))


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
            str(DEFAULT_CNTFRQ_HZ),
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
    (node.core.fleet's mix, which `kvmtimer fleet` serves too).

    With `skew_ns`, the nodes' realtimes disagree on purpose: node-1 0, node-2 +skew,
    node-3 -skew, node-4 +2 skew, node-5 -2 skew, ...
    """
    plans = []
    for i in range(1, count + 1):
        h = fleet_host(i)
        f = h.features
        skew = i // 2 * skew_ns * (1 if i % 2 == 0 else -1)
        plans.append(NodePlan(h.node_id, int(f.ecv), f.vhe, f.api_profile, h.counter_base, skew))
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


@dataclass(slots=True)
class Refusal:
    guest_id: str
    destination: str
    code: str
    details: str


@dataclass(slots=True)
class Demo:
    """State of one `kvmtimer up` run."""

    settings: UpSettings
    tty: bool  # stdout is a terminal: the live view, else progress lines
    stub: cpb_grpc.ControllerStub
    address: str
    rng: random.Random
    started: float = field(default_factory=time.monotonic)
    stopped: float | None = None  # monotonic time the migrating stopped
    nodes: list[cpb.NodeStatus] = field(default_factory=list)
    guests: list[cpb.Guest] = field(default_factory=list)
    recent: dict[str, cpb.Migration] = field(default_factory=dict)  # last migrations by id, oldest first
    finished: list[cpb.Migration] = field(default_factory=list)  # every migration that ended
    refusals: list[Refusal] = field(default_factory=list)
    in_flight: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # by guest id
    last_error: dict[str, int] = field(default_factory=dict)  # guest -> counter error of its last move
    retrier: Retrier = field(default_factory=Retrier)  # transient gRPC errors retried (and counted)
    period_ticks: int = PERIOD_TICKS  # the guests' timer period
    # (deadlines taken, their lateness summed) by guest when the migrating started
    lateness_baseline: dict[str, tuple[int, int]] = field(default_factory=dict)

    def elapsed(self) -> float:
        """Seconds of migrations so far (until the stop, once stopped)."""
        return (self.stopped or time.monotonic()) - self.started

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
        if not self.tty:
            print(f"[{self.elapsed():6.1f}s] {line}", flush=True)

    # --- migrations --------------------------------------------------------

    async def refresh(self) -> None:
        async def nodes_of(_: int) -> cpb.ListNodesResponse:
            listed: cpb.ListNodesResponse = await self.stub.ListNodes(
                cpb.ListNodesRequest(), timeout=RPC_TIMEOUT_S
            )
            return listed

        async def guests_of(_: int) -> cpb.ListGuestsResponse:
            listed: cpb.ListGuestsResponse = await self.stub.ListGuests(
                cpb.ListGuestsRequest(), timeout=RPC_TIMEOUT_S
            )
            return listed

        nodes = await self.retrier.call(nodes_of)
        guests = await self.retrier.call(guests_of)
        self.nodes, self.guests = list(nodes.nodes), list(guests.guests)

    async def list_migrations(self) -> cpb.ListMigrationsResponse:
        async def attempt(_: int) -> cpb.ListMigrationsResponse:
            listed: cpb.ListMigrationsResponse = await self.stub.ListMigrations(
                cpb.ListMigrationsRequest(), timeout=RPC_TIMEOUT_S
            )
            return listed

        return await self.retrier.call(attempt)

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
                await asyncio.wait_for(stop.wait(), self.settings.interval)

    async def watch_loop(self) -> None:
        """Follow every phase change of every migration, for the live view."""
        with contextlib.suppress(grpc.aio.AioRpcError):
            async for event in self.stub.WatchMigrations(cpb.WatchMigrationsRequest()):
                self.remember(event.migration)
