"""The controller's live state and the adapters that drive nodes.

Inventory, guests and migration records live here; decisions come from the
pure controller.core modules, and every node is driven only through its public
gRPC API (controller.clients.node), the way a VMM drives KVM ioctls.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

import grpc
import structlog
from kvmtimer.v1 import controller_pb2 as cpb
from kvmtimer.v1 import node_pb2 as pb

from controller.clients.node import NodeClient
from controller.core.errors import (
    Aborted,
    AlreadyExists,
    ControllerError,
    FailedPrecondition,
    InvalidArgument,
    NodeCallError,
    NotFound,
    Unavailable,
)
from controller.core.migration import (
    METHOD_PREFERENCE,
    Limits,
    Method,
    MigrationRecord,
    Phase,
    RegWrite,
    SourceSnapshot,
    Step,
    check_state_loss,
    choose_method,
    predicted_reg_list,
    register_set,
    supports,
)
from controller.core.model import GuestId, GuestRecord, MigrationId, NodeId, NodeRecord, node_load
from controller.core.placement import place
from controller.service import convert
from controller.telemetry.collector import TelemetryCollector
from controller.telemetry.hub import Hub
from node.core.clock import NS_PER_S, U64_MASK
from node.core.features import ApiProfile, ClockMode
from node.core.timer import CTL_ENABLE, DEFAULT_PPI, TimerId
from node.core.uapi import KVM_ARM_VCPU_TIMER_PHYS_OFFSET, OneReg, TimerAttr
from node.core.workload import WorkloadSpec
from node.runtime.addr import is_loopback
from node.wire import features_from_info, workload_spec_to_pb

log = structlog.get_logger("kvmtimer.controller")

MAX_GUEST_VCPUS = 512
TransferHook = Callable[[MigrationRecord], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class MigrationEventRecord:
    """A phase transition or step, as published to watchers."""

    migration: MigrationRecord  # a copy of the record at that moment
    step: str  # step name, or "" for a phase change
    realtime_ns: int  # when it happened


class Cluster:
    """Nodes, guests and migrations of one controller."""

    def __init__(
        self,
        *,
        limits: Limits | None = None,
        node_timeout_s: float = 5.0,
        health_interval_s: float = 1.0,
        transfer_hook: TransferHook | None = None,
        node_credentials: grpc.ChannelCredentials | None = None,
        node_server_name: str | None = None,
    ) -> None:
        """`node_credentials`: mutual TLS towards the nodes (None = plaintext)."""
        self.node_credentials = node_credentials
        self.node_server_name = node_server_name
        # Without node_credentials: may nodes off loopback be dialled in plaintext? A deployed
        # controller allows it only with --insecure (controller/deploy.py).
        self.plaintext_off_loopback = True
        self.limits = limits or Limits()
        self.node_timeout_s = node_timeout_s
        self.health_interval_s = health_interval_s
        self.transfer_hook = transfer_hook
        self.nodes: dict[NodeId, NodeRecord] = {}
        self.clients: dict[NodeId, NodeClient] = {}
        self.guests: dict[GuestId, GuestRecord] = {}
        self.migrations: dict[MigrationId, MigrationRecord] = {}
        self.events: Hub[MigrationEventRecord] = Hub()
        # Everything observers stream (gRPC WatchTelemetry, MQTT): vCPU sample batches,
        # migration events and node health, as protobuf items.
        self.telemetry: Hub[cpb.ClusterTelemetry] = Hub()
        # Telemetry: node sample streams into `telemetry` while it is watched (controller/telemetry/).
        self.collector = TelemetryCollector(self)
        self._tasks: dict[MigrationId, asyncio.Task[None]] = {}
        self._slots = asyncio.Condition()
        self._health_task: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)

    # --- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        if self._health_task is None and self.health_interval_s > 0:
            self._health_task = asyncio.create_task(self._health_loop(), name="node-health")
        self.collector.start()  # telemetry

    async def stop(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        # In-flight migrations get a few seconds to finish (or roll back) on their own.
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=5.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.collector.stop()  # telemetry
        self.events.close()
        self.telemetry.close()
        for client in self.clients.values():
            await client.close()

    # --- nodes ---------------------------------------------------------------

    def connect(self, node_id: str, address: str) -> NodeClient:
        """A client for the node at `address`, with the cluster's transport security.

        Raises FailedPrecondition for plaintext to a non-loopback node when that is not allowed.
        """
        if self.node_credentials is None and not self.plaintext_off_loopback and not is_loopback(address):
            raise FailedPrecondition(
                f"refusing plaintext gRPC to node {node_id or address} at {address}: give the controller "
                "--tls-cert/--tls-key/--tls-ca, or --insecure"
            )
        return NodeClient(
            node_id,
            address,
            timeout_s=self.node_timeout_s,
            credentials=self.node_credentials,
            server_name=self.node_server_name,
        )

    async def register_node(self, node_id: str, address: str) -> NodeRecord:
        """Add (or re-address) a node; its features come from the node itself.

        Registering a known node again at the same address (self-registration repeats, DNS
        discovery) keeps its connection, which in-flight migrations may be using.
        """
        if not node_id or not address:
            raise InvalidArgument("node_id and address are required")
        existing = self.clients.get(NodeId(node_id))
        reuse = existing is not None and existing.address == address
        client = existing if existing is not None and reuse else self.connect(node_id, address)
        try:
            info = await client.host_info()
        except NodeCallError as err:
            if not reuse:
                await client.close()
            raise Unavailable(f"cannot reach node {node_id} at {address}: {err.detail or err.code}") from None
        if info.node_id != node_id:
            if not reuse:
                await client.close()
            raise InvalidArgument(f"the node at {address} calls itself {info.node_id!r}, not {node_id!r}")
        known = self.nodes.get(NodeId(node_id))
        if reuse and known is not None:
            known.features = features_from_info(info)
            self._set_health(known.node_id, True, "")
            return known
        old = self.clients.pop(NodeId(node_id), None)
        if old is not None:
            await old.close()
        record = NodeRecord(
            NodeId(node_id), address, features_from_info(info), ClockMode(info.clock_mode), healthy=True
        )
        self.nodes[record.node_id] = record
        self.clients[record.node_id] = client
        log.info(
            "node_registered", node_id=node_id, address=address, api_profile=record.features.api_profile.name
        )
        self.collector.kick()  # telemetry: stream from the new node if watched
        return record

    def node(self, node_id: str) -> NodeRecord:
        try:
            return self.nodes[NodeId(node_id)]
        except KeyError:
            raise NotFound(f"no node {node_id!r}") from None

    def load(self, node_id: NodeId) -> tuple[int, int]:
        """(guests, vCPUs) placed on a node."""
        guests = [g for g in self.guests.values() if g.node_id == node_id]
        return len(guests), sum(g.vcpus for g in guests)

    async def check_health(self) -> None:
        """One round of health checks on every node."""
        results = await asyncio.gather(*(c.check_health(timeout_s=1.0) for c in self.clients.values()))
        for (node_id, _), ok in zip(list(self.clients.items()), results, strict=True):
            self._set_health(node_id, ok, "" if ok else "health check failed")

    def _set_health(self, node_id: NodeId, ok: bool, reason: str) -> None:
        node = self.nodes.get(node_id)
        if node is None or node.healthy == ok:
            return
        node.healthy, node.last_error = ok, reason
        log.info("node_health_changed", node_id=node_id, healthy=ok, reason=reason)
        self.publish_node(node)
        self.collector.kick()  # telemetry: follow the node's health

    def publish_node(self, node: NodeRecord) -> None:
        """Tell telemetry observers about a node's (new) status."""
        if self.telemetry.subscribers:
            status = convert.node_status(node, *self.load(node.node_id))
            self.telemetry.publish(
                cpb.ClusterTelemetry(node=cpb.NodeHealthEvent(node=status, realtime_ns=time.time_ns()))
            )

    async def _health_loop(self) -> None:
        while True:
            try:
                await self.check_health()
            except Exception:
                log.exception("health_loop_error")
            await asyncio.sleep(self.health_interval_s)

    def _client(self, node_id: NodeId) -> NodeClient:
        return self.clients[node_id]

    # --- guests --------------------------------------------------------------

    def guest(self, guest_id: str) -> GuestRecord:
        try:
            return self.guests[GuestId(guest_id)]
        except KeyError:
            raise NotFound(f"no guest {guest_id!r}") from None

    async def create_guest(
        self, guest_id: str, vcpus: int, workload: WorkloadSpec | None = None, node_id: str = ""
    ) -> GuestRecord:
        """Create the VM, its vCPUs and the guest program on a node, and run it.

        `workload=None`: a 100 Hz virtual timer at the chosen node's frequency.
        """
        if not 1 <= vcpus <= MAX_GUEST_VCPUS:
            raise InvalidArgument(f"vcpus must be 1..{MAX_GUEST_VCPUS}, got {vcpus}")
        if not guest_id:
            while GuestId(guest_id := f"guest-{next(self._ids)}") in self.guests:
                pass
        if GuestId(guest_id) in self.guests:
            raise AlreadyExists(f"guest {guest_id!r} already exists")
        if node_id:
            node = self.node(node_id)
            if not node.healthy:
                raise FailedPrecondition(f"node {node_id} is down: {node.last_error}")
        else:
            node = place(self.nodes.values(), list(self.guests.values()))
        if workload is None:
            workload = WorkloadSpec(period_ticks=max(node.features.cntfrq_hz // 100, 100))
        if workload.use_ptimer and not node.features.has_ptimer_regs:
            # Its physical timer cannot be saved on this kernel (spec §2.1): moving it loses it.
            log.info("guest_ptimer_unmovable", guest_id=guest_id, node_id=node.node_id)
        # Reserve the id before the first await so a concurrent create cannot take it.
        record = GuestRecord(GuestId(guest_id), node.node_id, guest_id, vcpus, workload)
        record.history.append(node.node_id)
        self.guests[record.guest_id] = record
        try:
            await self._start_vm(node, record)
        except BaseException:
            del self.guests[record.guest_id]
            raise
        log.info("guest_created", guest_id=guest_id, node_id=node.node_id, vcpus=vcpus)
        return record

    async def _start_vm(self, node: NodeRecord, guest: GuestRecord) -> None:
        client = self._client(node.node_id)
        calls = [pb.BatchCall(create_vm=pb.CreateVmRequest(vm_id=guest.vm_id))]
        calls += [
            pb.BatchCall(create_vcpu=pb.CreateVcpuRequest(vm_id=guest.vm_id, vcpu_index=i))
            for i in range(guest.vcpus)
        ]
        calls.append(pb.BatchCall(get_clock=pb.GetClockRequest()))
        try:
            results = await client.batch(calls)
            if node.features.api_profile is ApiProfile.VM_COUNTER_OFFSET:
                # kvmtool-style: both guest counters start from 0 with one VM-wide offset.
                await client.set_counter_offset(guest.vm_id, results[-1].get_clock.host_counter)
            await client.batch(
                [
                    pb.BatchCall(
                        start_workload=pb.StartWorkloadRequest(
                            vm_id=guest.vm_id, spec=workload_spec_to_pb(guest.workload)
                        )
                    ),
                    pb.BatchCall(resume_vm=pb.ResumeVmRequest(vm_id=guest.vm_id)),
                ]
            )
        except NodeCallError as err:
            with contextlib.suppress(NodeCallError):
                await client.destroy_vm(guest.vm_id)
            raise _node_failure(err) from None

    async def destroy_guest(self, guest_id: str) -> None:
        guest = self.guest(guest_id)
        if guest.migrating:
            raise Aborted(f"guest {guest_id} is migrating ({guest.migrating}); cancel or wait first")
        try:
            await self._client(guest.node_id).destroy_vm(guest.vm_id)
        except NodeCallError as err:
            if err.errno_name is None and err.code == "NOT_FOUND":
                pass  # already gone on the node
            else:
                raise _node_failure(err) from None
        del self.guests[guest.guest_id]
        log.info("guest_destroyed", guest_id=guest_id, node_id=guest.node_id)

    async def observations(self, guest: GuestRecord, include_samples: bool = False) -> pb.GuestObservations:
        try:
            return await self._client(guest.node_id).observations(guest.vm_id, include_samples)
        except NodeCallError as err:
            raise _node_failure(err) from None

    # --- migrations ----------------------------------------------------------

    def migration(self, migration_id: str) -> MigrationRecord:
        try:
            return self.migrations[MigrationId(migration_id)]
        except KeyError:
            raise NotFound(f"no migration {migration_id!r}") from None

    def _destination_for(
        self,
        guest: GuestRecord,
        destination: str,
        method: Method,
        facts: _SourceFacts,
        allow_state_loss: bool,
    ) -> NodeRecord:
        source = self.node(guest.node_id)
        if destination:
            dst = self.node(destination)
            if dst.node_id == source.node_id:
                raise InvalidArgument(f"guest {guest.guest_id} already runs on {destination}")
            if not dst.healthy:
                raise FailedPrecondition(f"destination {destination} is down: {dst.last_error}")
            return dst

        def keeps_ptimer(n: NodeRecord) -> bool:
            m = (
                method
                if method is not Method.AUTO
                else next(x for x in METHOD_PREFERENCE if supports(n.features, x))
            )
            regs = register_set(facts.reg_ids, predicted_reg_list(n.features), m, uses_ptimer=True)
            return not regs.ptimer_lost

        candidates = [
            n
            for n in self.nodes.values()
            if (method is Method.AUTO or supports(n.features, method))
            and (allow_state_loss or not facts.uses_ptimer or keeps_ptimer(n))
        ]
        return place(
            candidates,
            list(self.guests.values()),
            exclude=frozenset({source.node_id}),
            cntfrq_hz=source.features.cntfrq_hz,
        )

    async def _source_facts(self, guest: GuestRecord) -> _SourceFacts:
        """What the source kernel lists, and whether the guest uses its physical timer.

        Criterion: the guest's workload arms its physical timer, or — where the source
        kernel has PTIMER_CTL as a ONE_REG register (6.4+) — any vCPU's PTIMER_CTL has
        ENABLE set. Before 6.4 a VMM cannot read PTIMER_CTL at all; the workload is what
        the controller knows then.
        """
        client = self._client(guest.node_id)
        try:
            listed = await client.batch(
                [pb.BatchCall(get_reg_list=pb.GetRegListRequest(vm_id=guest.vm_id, vcpu_index=0))]
            )
            reg_ids = tuple(listed[0].get_reg_list.reg_ids)
            uses_ptimer = guest.workload.use_ptimer
            if OneReg.PTIMER_CTL in reg_ids and not uses_ptimer:
                ctls, _, _ = await client.get_regs(
                    guest.vm_id, [(i, OneReg.PTIMER_CTL) for i in range(guest.vcpus)]
                )
                uses_ptimer = any(ctl & CTL_ENABLE for ctl in ctls)
        except NodeCallError as err:
            raise _node_failure(err) from None
        return _SourceFacts(reg_ids, uses_ptimer)

    async def migrate(
        self,
        guest_id: str,
        destination: str,
        method: Method,
        migration_id: str = "",
        *,
        wait: bool = False,
        allow_state_loss: bool = False,
    ) -> MigrationRecord:
        """Check, then start (or queue) a migration. Refusals raise and change nothing."""
        if migration_id and MigrationId(migration_id) in self.migrations:
            existing = self.migrations[MigrationId(migration_id)]
            same = (
                existing.guest_id == guest_id
                and existing.requested_method is method
                and existing.allow_state_loss == allow_state_loss
            )
            if not same or (destination and existing.destination != destination):
                raise AlreadyExists(f"migration id {migration_id} is already used for another request")
            if wait:
                await self.wait(existing)
            return existing
        guest = self.guest(guest_id)
        if guest.migrating:
            raise Aborted(f"guest {guest_id} is already migrating ({guest.migrating})")
        source = self.node(guest.node_id)
        facts = await self._source_facts(guest)
        if guest.migrating:
            raise Aborted(f"guest {guest_id} is already migrating ({guest.migrating})")
        dst = self._destination_for(guest, destination, method, facts, allow_state_loss)
        chosen = choose_method(source.features, dst.features, method, destination_id=dst.node_id)
        # The destination has no VM yet: its kernel's list is predicted from its profile here;
        # the migration re-checks against the list the destination VM returns.
        regs = register_set(
            facts.reg_ids, predicted_reg_list(dst.features), chosen, uses_ptimer=facts.uses_ptimer
        )
        check_state_loss(
            regs,
            uses_ptimer=facts.uses_ptimer,
            allow_state_loss=allow_state_loss,
            source=(source.node_id, source.features),
            destination=(dst.node_id, dst.features),
            method=chosen,
        )
        mid = MigrationId(migration_id or f"mig-{next(self._ids)}")
        while not migration_id and mid in self.migrations:
            mid = MigrationId(f"mig-{next(self._ids)}")
        record = MigrationRecord(
            migration_id=mid,
            guest_id=guest.guest_id,
            source=source.node_id,
            destination=dst.node_id,
            requested_method=method,
            method=chosen,
            started_ns=time.monotonic_ns(),
            created_realtime_ns=time.time_ns(),
            guest_uses_ptimer=facts.uses_ptimer,
            allow_state_loss=allow_state_loss,
        )
        self.migrations[mid] = record
        guest.migrating = mid
        self._publish(record)
        self._tasks[mid] = asyncio.create_task(self._run(record, guest), name=f"migration-{mid}")
        if wait:
            await self.wait(record)
        return record

    async def wait(self, record: MigrationRecord) -> None:
        task = self._tasks.get(record.migration_id)
        if task is not None:
            await asyncio.shield(task)

    async def cancel(self, migration_id: str) -> MigrationRecord:
        record = self.migration(migration_id)
        if not record.cancellable:
            raise FailedPrecondition(
                f"migration {migration_id} can no longer be cancelled ({record.phase.name}"
                f"{', destination resuming' if Step.RESUME in record.steps else ''})"
            )
        record.cancel_requested = True
        async with self._slots:
            self._slots.notify_all()
        return record

    def _publish(self, record: MigrationRecord, step: str = "") -> None:
        # Watchers get the record as it is now, not the live object.
        frozen = dataclasses.replace(record, steps=list(record.steps))
        now = time.time_ns()
        self.events.publish(MigrationEventRecord(frozen, step, now))
        if self.telemetry.subscribers:
            event = cpb.MigrationEvent(migration=convert.migration_to_pb(frozen), step=step, realtime_ns=now)
            self.telemetry.publish(cpb.ClusterTelemetry(migration=event))

    def _advance(self, record: MigrationRecord, phase: Phase) -> None:
        record.advance(phase)
        self._publish(record)

    def _step(self, record: MigrationRecord, step: Step) -> None:
        record.steps.append(step.value)
        self._publish(record, step.value)

    async def _acquire_slot(self, record: MigrationRecord) -> None:
        async with self._slots:
            await self._slots.wait_for(
                lambda: (
                    record.cancel_requested
                    or self.limits.can_start(
                        record.source, [m for m in self.migrations.values() if m is not record]
                    )
                )
            )

    async def _release_slot(self) -> None:
        async with self._slots:
            self._slots.notify_all()

    async def _run(self, record: MigrationRecord, guest: GuestRecord) -> None:
        log_ = log.bind(migration_id=record.migration_id, guest_id=guest.guest_id)
        try:
            await self._acquire_slot(record)
            await _Migrator(self, record, guest).run()
            log_.info(
                "migration_succeeded",
                source=record.source,
                destination=record.destination,
                method=record.method.name if record.method else None,
                downtime_us=record.downtime_us(),
                counter_error_ticks=record.counter_error_ticks,
            )
        except _Cancelled:
            record.cancelled = True
            self._fail(record, "cancelled by request; the guest stays on the source")
            log_.info("migration_cancelled")
        except ControllerError as err:
            self._fail(record, err.message)
            log_.warning("migration_failed", reason=err.message)
        except Exception as err:
            self._fail(record, f"internal error: {err!r}")
            log_.exception("migration_internal_error")
        finally:
            guest.migrating = None
            self._tasks.pop(record.migration_id, None)
            await self._release_slot()

    def _fail(self, record: MigrationRecord, reason: str) -> None:
        record.reason = reason
        record.ended_ns = time.monotonic_ns()
        record.finished_realtime_ns = time.time_ns()
        if not record.phase.terminal:
            self._advance(record, Phase.FAILED)


class _Cancelled(Exception):
    """Raised inside a migration when a cancel was requested at a step boundary."""


@dataclass(frozen=True, slots=True)
class _SourceFacts:
    """Read from the source before a migration is accepted."""

    reg_ids: tuple[int, ...]  # the source kernel's KVM_GET_REG_LIST (vCPU 0)
    uses_ptimer: bool  # the guest uses its physical timer


def _node_failure(err: NodeCallError) -> ControllerError:
    if err.unreachable:
        return Unavailable(err.message)
    return FailedPrecondition(err.message)


class _Migrator:
    """Executes one migration's steps. The guest is never lost and never runs twice:
    until the destination is told to resume, any failure resumes the source unchanged."""

    def __init__(self, cluster: Cluster, record: MigrationRecord, guest: GuestRecord) -> None:
        self.c = cluster
        self.r = record
        self.guest = guest
        self.src_paused = False
        self.dst_vm: str | None = None

    def _check_cancel(self) -> None:
        if self.r.cancel_requested:
            raise _Cancelled()

    async def run(self) -> None:
        r, c = self.r, self.c
        assert r.destination is not None and r.method is not None
        self._check_cancel()
        c._advance(r, Phase.SCHEDULING)
        source, dst = c.node(r.source), c.node(r.destination)
        if not dst.healthy:
            raise FailedPrecondition(f"destination {dst.node_id} is down: {dst.last_error}")
        if not source.healthy:
            raise FailedPrecondition(f"source {source.node_id} is down: {source.last_error}")
        choose_method(source.features, dst.features, r.method, destination_id=dst.node_id)
        c._advance(r, Phase.SCHEDULED)
        src_client, dst_client = c._client(source.node_id), c._client(dst.node_id)
        try:
            await self._migrate(src_client, dst_client, dst)
        except BaseException as err:
            await self._rollback(src_client, dst_client, err)
            if isinstance(err, NodeCallError):
                if err.unreachable:
                    c._set_health(NodeId(err.node_id), False, err.message)
                raise _node_failure(err) from None
            raise

    async def _migrate(self, src: NodeClient, dst: NodeClient, dst_node: NodeRecord) -> None:
        r, c, guest = self.r, self.c, self.guest
        assert r.method is not None
        vm = guest.vm_id
        n = guest.vcpus

        # PREPARE: everything that does not need the guest stopped.
        c._advance(r, Phase.PREPARING_TARGET)
        c._step(r, Step.PREPARE)
        before = await src.batch(
            [
                pb.BatchCall(get_reg_list=pb.GetRegListRequest(vm_id=vm, vcpu_index=0)),
                pb.BatchCall(
                    get_device_attr=pb.DeviceAttrRequest(vm_id=vm, group=1, attr=TimerAttr.IRQ_VTIMER)
                ),
                pb.BatchCall(
                    get_device_attr=pb.DeviceAttrRequest(vm_id=vm, group=1, attr=TimerAttr.IRQ_PTIMER)
                ),
                *(
                    pb.BatchCall(get_vcpu_state=pb.GetVcpuStateRequest(vm_id=vm, vcpu_index=i))
                    for i in range(n)
                ),
                # Pre-copy of the guest memory while the guest still runs (QEMU's RAM pre-copy):
                # only what changes after this goes through the downtime window.
                pb.BatchCall(save_workload=pb.SaveWorkloadRequest(vm_id=vm, live=True)),
            ]
        )
        src_ids = tuple(before.pop(0).get_reg_list.reg_ids)
        ppis = {
            TimerId.VTIMER: before[0].get_device_attr.value,
            TimerId.PTIMER: before[1].get_device_attr.value,
        }
        precopy = before.pop().save_workload
        has_workload = precopy.HasField("spec")
        r.traps_before = sum(res.get_vcpu_state.trap_count for res in before[2:])
        r.source_traps_cntpct = before[2].get_vcpu_state.traps_cntpct
        dst_vm = f"{guest.guest_id}@{r.migration_id}"
        prepare = [pb.BatchCall(create_vm=pb.CreateVmRequest(vm_id=dst_vm))]
        prepare += [
            pb.BatchCall(create_vcpu=pb.CreateVcpuRequest(vm_id=dst_vm, vcpu_index=i)) for i in range(n)
        ]
        prepare += [
            pb.BatchCall(set_device_attr=pb.SetDeviceAttrRequest(vm_id=dst_vm, group=1, attr=int(t), value=v))
            for t, v in ppis.items()
            if v != DEFAULT_PPI[t]
        ]
        if has_workload:
            prepare.append(pb.BatchCall(load_workload=pb.LoadWorkloadRequest(vm_id=dst_vm, state=precopy)))
        # The destination kernel's register list: with the source's, it decides what is carried.
        prepare.append(pb.BatchCall(get_reg_list=pb.GetRegListRequest(vm_id=dst_vm, vcpu_index=0)))
        self.dst_vm = dst_vm
        prepared = await dst.batch(prepare)
        dst_ids = tuple(prepared[-1].get_reg_list.reg_ids)
        regs = register_set(src_ids, dst_ids, r.method, uses_ptimer=r.guest_uses_ptimer)
        src_node = c.node(r.source)
        check_state_loss(
            regs,
            uses_ptimer=r.guest_uses_ptimer,
            allow_state_loss=r.allow_state_loss,
            source=(src_node.node_id, src_node.features),
            destination=(dst_node.node_id, dst_node.features),
            method=r.method,
        )
        r.not_carried = list(regs.not_carried)
        r.target_ready_ns = time.monotonic_ns()
        c._advance(r, Phase.TARGET_READY)
        self._check_cancel()

        # RUNNING: stop the source, read the guest state in one round trip.
        c._advance(r, Phase.RUNNING)
        c._step(r, Step.PAUSE)
        # Save every register the source lists, on every vCPU (what QEMU does).
        entries = [(i, reg) for i in range(n) for reg in regs.saved]
        # Before 6.4 there is no PTIMER_CNT: the guest physical counter is H minus the
        # series' physical offset (its vCPU attribute), or H itself on 5.15.
        read_phys_attr = OneReg.PTIMER_CNT not in regs.saved and src_node.features.has_vcpu_offsets
        extra = (
            [
                pb.BatchCall(
                    get_device_attr=pb.DeviceAttrRequest(
                        vm_id=vm, group=1, attr=KVM_ARM_VCPU_TIMER_PHYS_OFFSET
                    )
                )
            ]
            if read_phys_attr
            else []
        )
        self.src_paused = True
        r.stop_sent_ns = time.monotonic_ns()
        snap = await src.batch(
            [
                pb.BatchCall(pause_vm=pb.PauseVmRequest(vm_id=vm)),
                *extra,
                pb.BatchCall(
                    get_regs=pb.GetRegsRequest(
                        vm_id=vm, regs=[pb.RegValue(vcpu_index=i, reg_id=reg) for i, reg in entries]
                    )
                ),
                pb.BatchCall(
                    save_workload=pb.SaveWorkloadRequest(
                        vm_id=vm,
                        delta=has_workload,
                        since_reads={v.vcpu_index: v.reads for v in precopy.vcpus},
                    )
                ),
            ]
        )
        paused = snap.pop(0).pause_vm
        r.paused_realtime_ns, r.paused_host_counter = paused.realtime_ns, paused.host_counter
        phys_offset = snap.pop(0).get_device_attr.value if read_phys_attr else 0
        c._step(r, Step.SNAPSHOT)
        got = snap[0].get_regs
        saved = {entry: v.value for entry, v in zip(entries, got.regs, strict=True)}
        snapshot = SourceSnapshot(
            cntvct=saved[(0, OneReg.TIMER_CNT)],
            cntpct=saved.get((0, OneReg.PTIMER_CNT), (got.host_counter - phys_offset) & U64_MASK),
            host_counter=got.host_counter,
            realtime_ns=got.realtime_ns,
            cntfrq_hz=src_node.features.cntfrq_hz,
        )
        r.source_voffset, r.source_poffset = snapshot.voffset, snapshot.poffset
        timer_regs = tuple(RegWrite(i, reg, saved[(i, reg)]) for i in range(n) for reg in regs.restored)
        workload_state = snap[1].save_workload
        self._check_cancel()

        c._step(r, Step.TRANSFER)
        if c.transfer_hook is not None:
            await c.transfer_hook(r)
        self._check_cancel()

        c._step(r, Step.RESTORE)
        restore = [pb.BatchCall(set_regs=_set_regs(dst_vm, timer_regs))]
        if has_workload:
            restore.append(
                pb.BatchCall(
                    load_workload=pb.LoadWorkloadRequest(vm_id=dst_vm, state=workload_state, merge=True)
                )
            )
        # The destination applies the record at its own instant: it credits the realtime that
        # passed as its clock sees it then (never negative), with its kernel's interface.
        restore.append(pb.BatchCall(apply_counter_record=_apply_request(dst_vm, snapshot, r.method)))
        self._check_cancel()
        # From here on the guest belongs to the destination: no more cancelling.
        c._step(r, Step.RESUME)
        restore.append(pb.BatchCall(resume_vm=pb.ResumeVmRequest(vm_id=dst_vm)))
        restored = await dst.batch(restore)
        r.resume_acked_ns = time.monotonic_ns()
        r.resumed_realtime_ns = restored[-1].resume_vm.realtime_ns
        credit = restored[-2].apply_counter_record
        r.applied_as, r.elapsed_ticks = credit.applied_as, credit.elapsed_ticks
        r.destination_voffset, r.destination_poffset = credit.voffset, credit.poffset
        r.realtime_skew_ns = credit.realtime_offset_ns - got.realtime_offset_ns

        # CLEANUP: the guest runs on the destination; drop the stopped source VM.
        guest.node_id, guest.vm_id = NodeId(dst_node.node_id), dst_vm
        guest.migrations += 1
        guest.history.append(guest.node_id)
        self.src_paused = False
        self.dst_vm = None
        c._step(r, Step.CLEANUP)
        try:
            # The source's counter now ends the downtime on the clock that started it.
            cleaned = await src.batch(
                [
                    pb.BatchCall(get_clock=pb.GetClockRequest()),
                    pb.BatchCall(destroy_vm=pb.DestroyVmRequest(vm_id=vm)),
                ]
            )
            ticks = (cleaned[0].get_clock.host_counter - paused.host_counter) & U64_MASK
            r.stop_bound_ns = ticks * NS_PER_S // src_node.features.cntfrq_hz
        except NodeCallError as err:
            log.warning("source_cleanup_failed", migration_id=r.migration_id, error=err.message)
        try:
            after = await dst.batch(
                [
                    *(
                        pb.BatchCall(get_vcpu_state=pb.GetVcpuStateRequest(vm_id=dst_vm, vcpu_index=i))
                        for i in range(n)
                    ),
                    pb.BatchCall(get_guest_observations=pb.GetGuestObservationsRequest(vm_id=dst_vm)),
                ]
            )
            self._record_outcome(after)
        except NodeCallError as err:
            log.warning("post_migration_read_failed", migration_id=r.migration_id, error=err.message)
        r.ended_ns = time.monotonic_ns()
        r.finished_realtime_ns = time.time_ns()
        c._advance(r, Phase.SUCCEEDED)

    def _record_outcome(self, after: list[pb.BatchResult]) -> None:
        """Trap counts and the guest's own measurement of the jump, after the move."""
        r = self.r
        states = [res.get_vcpu_state for res in after if res.HasField("get_vcpu_state")]
        r.traps_after = sum(s.trap_count for s in states)
        r.destination_traps_cntpct = states[0].traps_cntpct
        r.destination_uses_cntpoff = states[0].uses_cntpoff
        obs = after[-1].get_guest_observations
        errors = [o.last_jump_error_ticks for o in obs.vcpus if o.HasField("last_jump_error_ticks")]
        r.counter_error_ticks = max(errors, key=abs) if errors else None
        stops = [o.last_stop_ns for o in obs.vcpus if o.HasField("last_stop_ns")]
        r.guest_stop_ns = max(stops) if stops else None

    async def _rollback(self, src: NodeClient, dst: NodeClient, cause: BaseException) -> None:
        """Put everything back: drop the destination VM, resume the source guest unchanged."""
        if self.dst_vm is None and not self.src_paused:
            return
        self.c._step(self.r, Step.ROLLBACK)
        if self.dst_vm is not None:
            try:
                await dst.destroy_vm(self.dst_vm)
            except Exception as err:
                log.warning("rollback_destroy_failed", migration_id=self.r.migration_id, error=repr(err))
        if self.src_paused:
            try:
                await src.resume(self.guest.vm_id)
            except Exception as err:
                log.error("rollback_resume_failed", migration_id=self.r.migration_id, error=repr(err))
        log.info("migration_rolled_back", migration_id=self.r.migration_id, cause=repr(cause))


def _apply_request(vm_id: str, snapshot: SourceSnapshot, method: Method) -> pb.ApplyCounterRecordRequest:
    record = pb.CounterRecord(
        cntvct=snapshot.cntvct,
        cntpct=snapshot.cntpct,
        host_counter=snapshot.host_counter,
        realtime_ns=snapshot.realtime_ns,
        cntfrq_hz=snapshot.cntfrq_hz,
    )
    return pb.ApplyCounterRecordRequest(
        vm_id=vm_id, record=record, method=cast(pb.CounterRestoreMethod, int(method))
    )


def _set_regs(vm_id: str, writes: tuple[RegWrite, ...]) -> pb.SetRegsRequest:
    return pb.SetRegsRequest(
        vm_id=vm_id,
        regs=[pb.RegValue(vcpu_index=w.vcpu_index, reg_id=w.reg_id, value=w.value) for w in writes],
    )


__all__ = ["Cluster", "MigrationEventRecord", "TransferHook", "node_load"]
