"""The controller's facade over its parts: what the Controller service and the process call.

The parts: the node pool (controller/service/nodes.py), placement (controller.core.placement),
admission/limits (admission.py), the migration executor (executor.py), reconciliation
(reconciler.py), event publishing (events.py) and the state file (store.py). Decisions
come from the pure controller.core modules; every node is driven only through its
public gRPC API (controller.clients.node), the way a VMM drives KVM ioctls.

Durability: guests, migrations and the migration journal are written to the state file
before the node calls they lead to, so a restarted controller finds every guest again
(reconciler.py) and finishes every migration from its journal step.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

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
)
from controller.core.machine import Journal, Outcome, VmRef
from controller.core.migration import (
    METHOD_PREFERENCE,
    Limits,
    Method,
    MigrationRecord,
    Phase,
    Step,
    check_state_loss,
    choose_method,
    predicted_reg_list,
    register_set,
    supports,
)
from controller.core.model import (
    GuestId,
    GuestRecord,
    GuestState,
    MigrationId,
    NodeId,
    NodeRecord,
    check_guest_id,
    check_migration_id,
    creation_vm_id,
    migration_vm_id,
    node_load,
)
from controller.core.placement import NodeLoads, place
from controller.core.recovery import GuestPlacement, Orphan, Resolution
from controller.service import convert
from controller.service.admission import Admission
from controller.service.events import EventPublisher, MigrationEventRecord
from controller.service.executor import (
    Cancelled,
    FaultHook,
    MigrationExecutor,
    TransferHook,
    node_failure,
)
from controller.service.nodes import NodePool
from controller.service.reconciler import reconcile
from controller.service.store import Store, StoredGuest
from controller.telemetry.collector import TelemetryCollector
from controller.telemetry.hub import Hub
from node.core.features import ApiProfile
from node.core.timer import CTL_ENABLE
from node.core.uapi import OneReg
from node.core.workload import WorkloadSpec
from node.wire import workload_spec_to_pb

log = structlog.get_logger("kvmtimer.controller")

MAX_GUEST_VCPUS = 512


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
        store: Store | None = None,
        fault_hook: FaultHook | None = None,
    ) -> None:
        """`node_credentials`: mutual TLS towards the nodes (None = plaintext).
        `store`: the state file (None: in memory, nothing survives a restart).
        `fault_hook`: test-mode fault injection at each committed migration step."""
        self.pool = NodePool(
            node_timeout_s=node_timeout_s,
            node_credentials=node_credentials,
            node_server_name=node_server_name,
        )
        self.admission = Admission(limits)
        self.publisher = EventPublisher()
        self.store = store or Store.open(":memory:")
        self.health_interval_s = health_interval_s
        self.transfer_hook = transfer_hook
        self.fault_hook = fault_hook
        self.guests: dict[GuestId, GuestRecord] = {}
        # Guests and vCPUs per node, updated wherever a guest is committed (persist_guest).
        self.loads = NodeLoads()
        self.migrations: dict[MigrationId, MigrationRecord] = {}
        self.journals: dict[MigrationId, Journal] = {}
        self.orphans: dict[NodeId, tuple[Orphan, ...]] = {}  # from the last reconciliation
        self.pending_nodes: dict[NodeId, str] = {}  # stored nodes not reached yet: id -> address
        # Guests being created by this process (reconciliation leaves them alone).
        self.creating: set[GuestId] = set()
        # Telemetry: node sample streams into `telemetry` while it is watched (controller/telemetry/).
        self.collector = TelemetryCollector(self)
        self.pool.on_registered.append(self._node_registered)
        self.pool.on_health_changed.append(self._node_health_changed)
        self._tasks: dict[MigrationId, asyncio.Task[None]] = {}
        self._health_task: asyncio.Task[None] | None = None
        # Held while reconciliation acts on nodes; taken to mark a guest busy.
        self.reconcile_lock = asyncio.Lock()

    # --- parts, under their historical names -----------------------------------

    @property
    def nodes(self) -> dict[NodeId, NodeRecord]:
        return self.pool.nodes

    @property
    def clients(self) -> dict[NodeId, NodeClient]:
        return self.pool.clients

    @property
    def limits(self) -> Limits:
        return self.admission.limits

    @limits.setter
    def limits(self, value: Limits) -> None:
        self.admission.limits = value

    @property
    def events(self) -> Hub[MigrationEventRecord]:
        return self.publisher.events

    @property
    def telemetry(self) -> Hub[cpb.ClusterTelemetry]:
        return self.publisher.telemetry

    @telemetry.setter
    def telemetry(self, hub: Hub[cpb.ClusterTelemetry]) -> None:
        self.publisher.telemetry = hub

    @property
    def plaintext_off_loopback(self) -> bool:
        return self.pool.plaintext_off_loopback

    @plaintext_off_loopback.setter
    def plaintext_off_loopback(self, value: bool) -> None:
        self.pool.plaintext_off_loopback = value

    # --- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        self.pool.start()  # event-loop lag, for the health checks
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
        self.publisher.close()
        await self.pool.close()

    def load_state(self) -> None:
        """Read guests, migrations and the journal back from the state file (at start)."""
        for stored in self.store.guests():
            p = stored.placement
            if not p.state.alive and p.state is not GuestState.LOST:
                continue
            self.guests[p.guest_id] = GuestRecord(
                p.guest_id,
                p.vm.node_id,
                p.vm.vm_id,
                stored.vcpus,
                stored.workload,
                migrations=stored.migrations,
                history=[NodeId(n) for n in stored.history],
                state=p.state,
                reason=p.reason,
                generation=p.generation,
            )
            self.loads.update(self.guests[p.guest_id])
        for record in self.store.migrations():
            self.migrations[record.migration_id] = record
            if not record.phase.terminal and record.phase is not Phase.PENDING:
                self.admission.hold(record)  # still running: it counts against the limits
        for j in self.store.journals():
            self.journals[j.migration_id] = j
            if j.migration_id in self.migrations:  # the journal row may be ahead of the record's
                self.migrations[j.migration_id].journal_step = "" if j.step is None else j.step.value
            if j.outcome is Outcome.IN_FLIGHT and j.guest_id in self.guests:
                self.guests[j.guest_id].migrating = j.migration_id
        for node_id, address in self.store.nodes():
            if node_id not in self.pool.nodes:
                self.pending_nodes[node_id] = address
        log.info(
            "state_loaded",
            path=self.store.path,
            guests=len(self.guests),
            migrations=len(self.migrations),
            in_flight=sum(1 for j in self.journals.values() if j.outcome is Outcome.IN_FLIGHT),
            nodes=len(self.pending_nodes),
        )

    async def recover(self) -> None:
        """At start: reach the stored nodes, then reconcile with what they run."""
        await self.retry_pending_nodes()
        await reconcile(self)

    async def reconcile(self) -> None:
        """One reconciliation round (controller/service/reconciler.py)."""
        await reconcile(self)

    async def retry_pending_nodes(self) -> None:
        for node_id, address in list(self.pending_nodes.items()):
            try:
                await self.register_node(node_id, address)
            except Exception as err:
                log.info("stored_node_unreachable", node_id=node_id, address=address, error=str(err))

    # --- nodes ---------------------------------------------------------------

    def connect(self, node_id: str, address: str) -> NodeClient:
        return self.pool.connect(node_id, address)

    async def register_node(self, node_id: str, address: str) -> NodeRecord:
        """Add (or re-address) a node; its features come from the node itself."""
        record = await self.pool.register(node_id, address)
        self.pending_nodes.pop(record.node_id, None)
        self.store.put_node(record.node_id, record.address)
        return record

    def _node_registered(self, node: NodeRecord) -> None:
        self.collector.kick()  # telemetry: stream from the new node if watched

    def _node_health_changed(self, node: NodeRecord) -> None:
        self.publish_node(node)
        self.collector.kick()  # telemetry: follow the node's health

    def node(self, node_id: str) -> NodeRecord:
        return self.pool.node(node_id)

    def load(self, node_id: NodeId) -> tuple[int, int]:
        """(guests, vCPUs) placed on a node (lost guests do not count)."""
        return self.loads.guests(node_id), self.loads.vcpus(node_id)

    def node_status(self, node: NodeRecord) -> cpb.NodeStatus:
        status = convert.node_status(node, *self.load(node.node_id))
        status.orphans.extend(
            cpb.OrphanVm(vm_id=o.vm.vm_id, owner_guest_id=o.guest_id, owner_migration_id=o.migration_id)
            for o in self.orphans.get(node.node_id, ())
        )
        status.lost_guests.extend(self.loads.lost(node.node_id))
        return status

    async def check_health(self) -> None:
        """One round of health checks on every node."""
        await self.pool.check_health()

    def _set_health(self, node_id: NodeId, ok: bool, reason: str) -> None:
        self.pool.set_health(node_id, ok, reason)

    def publish_node(self, node: NodeRecord) -> None:
        """Tell telemetry observers about a node's (new) status."""
        if self.publisher.telemetry.subscribers:
            self.publisher.node(self.node_status(node))

    async def _health_loop(self) -> None:
        while True:
            try:
                await self.check_health()
                await self.retry_pending_nodes()
                await reconcile(self)
            except Exception:
                log.exception("health_loop_error")
            await asyncio.sleep(self.health_interval_s)

    # --- guests --------------------------------------------------------------

    def guest(self, guest_id: str) -> GuestRecord:
        try:
            return self.guests[GuestId(guest_id)]
        except KeyError:
            raise NotFound(f"no guest {guest_id!r}") from None

    def _stored(self, g: GuestRecord) -> StoredGuest:
        return StoredGuest(
            GuestPlacement(g.guest_id, VmRef(g.node_id, g.vm_id), g.state, g.generation, g.reason),
            g.vcpus,
            g.workload,
            g.migrations,
            tuple(g.history),
        )

    def persist_guest(self, g: GuestRecord) -> None:
        """Commit a guest (every change of its placement or state comes through here)."""
        self.loads.update(g)
        self.store.put_guest(self._stored(g))

    def forget_guest(self, guest_id: GuestId) -> None:
        """Remove a guest from the inventory and the state file."""
        del self.guests[guest_id]
        self.loads.remove(guest_id)
        self.store.delete_guest(guest_id)

    async def create_guest(
        self, guest_id: str, vcpus: int, workload: WorkloadSpec | None = None, node_id: str = ""
    ) -> GuestRecord:
        """Create the VM, its vCPUs and the guest program on a node, and run it.

        `workload=None`: a 100 Hz virtual timer at the chosen node's frequency. The guest is
        journaled (CREATING) before its VM is created; a failure destroys only that VM.
        """
        if not 1 <= vcpus <= MAX_GUEST_VCPUS:
            raise InvalidArgument(f"vcpus must be 1..{MAX_GUEST_VCPUS}, got {vcpus}")
        if guest_id:
            check_guest_id(guest_id)
            if GuestId(guest_id) in self.guests or self.store.guest_id_taken(guest_id):
                raise AlreadyExists(f"guest {guest_id!r} already exists")
        if node_id:
            node = self.node(node_id)
            if not node.healthy:
                raise FailedPrecondition(f"node {node_id} is down: {node.last_error}")
        else:
            node = place(self.pool.nodes.values(), self.loads.vcpus)
        if workload is None:
            workload = WorkloadSpec(period_ticks=max(node.features.cntfrq_hz // 100, 100))
        if workload.use_ptimer and not node.features.has_ptimer_regs:
            # Its physical timer cannot be saved on this kernel (spec §2.1): moving it loses it.
            log.info("guest_ptimer_unmovable", guest_id=guest_id, node_id=node.node_id)
        async with self.reconcile_lock:
            if not guest_id:
                # Never reused: the counter lives in the state file; names taken by hand are skipped.
                while self.store.guest_id_taken(guest_id := f"guest-{self.store.next_number('guest')}"):
                    pass
            elif GuestId(guest_id) in self.guests:
                raise AlreadyExists(f"guest {guest_id!r} already exists")
            gid = GuestId(guest_id)
            vm_id = creation_vm_id(gid, self.store.next_number("vm"))
            record = GuestRecord(gid, node.node_id, vm_id, vcpus, workload, state=GuestState.CREATING)
            record.history.append(node.node_id)
            # Reserve the id before the first await so a concurrent create cannot take it.
            self.guests[gid] = record
            self.creating.add(gid)
            self.persist_guest(record)
        try:
            await self._start_vm(node, record)
        except BaseException:
            self.forget_guest(gid)
            raise
        finally:
            self.creating.discard(gid)
        record.state = GuestState.RUNNING
        self.persist_guest(record)
        log.info("guest_created", guest_id=guest_id, node_id=node.node_id, vcpus=vcpus, vm_id=vm_id)
        return record

    async def _start_vm(self, node: NodeRecord, guest: GuestRecord) -> None:
        client = self.pool.client(node.node_id)
        owner = pb.VmOwner(guest_id=guest.guest_id, generation=guest.generation)
        calls = [pb.BatchCall(create_vm=pb.CreateVmRequest(vm_id=guest.vm_id, owner=owner))]
        calls += [
            pb.BatchCall(create_vcpu=pb.CreateVcpuRequest(vm_id=guest.vm_id, vcpu_index=i))
            for i in range(guest.vcpus)
        ]
        calls.append(pb.BatchCall(get_clock=pb.GetClockRequest()))
        created = False
        try:
            results = await client.batch(calls)
            created = True
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
            # Clean up only what this request created: its own VM id, never reused.
            if created or err.unreachable or err.code != "ALREADY_EXISTS":
                with contextlib.suppress(NodeCallError):
                    await client.destroy_vm(guest.vm_id)
            raise node_failure(err) from None

    async def destroy_guest(self, guest_id: str) -> None:
        guest = self.guest(guest_id)
        if guest.migrating:
            raise Aborted(f"guest {guest_id} is migrating ({guest.migrating}); cancel or wait first")
        if guest.state is GuestState.CREATING:
            raise Aborted(f"guest {guest_id} is being created; wait first")
        if guest.state is not GuestState.LOST:
            try:
                await self.pool.client(guest.node_id).destroy_vm(guest.vm_id)
            except NodeCallError as err:
                if err.errno_name is None and err.code == "NOT_FOUND":
                    pass  # already gone on the node
                else:
                    raise node_failure(err) from None
        self.forget_guest(guest.guest_id)
        log.info("guest_destroyed", guest_id=guest_id, node_id=guest.node_id)

    async def observations(self, guest: GuestRecord, include_samples: bool = False) -> pb.GuestObservations:
        if guest.state is GuestState.LOST:
            raise FailedPrecondition(f"guest {guest.guest_id} is lost: {guest.reason}")
        try:
            return await self.pool.client(guest.node_id).observations(guest.vm_id, include_samples)
        except NodeCallError as err:
            raise node_failure(err) from None

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
            for n in self.pool.nodes.values()
            if (method is Method.AUTO or supports(n.features, method))
            and (allow_state_loss or not facts.uses_ptimer or keeps_ptimer(n))
        ]
        return place(
            candidates,
            self.loads.vcpus,
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
        client = self.pool.client(guest.node_id)
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
            raise node_failure(err) from None
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
        if migration_id:
            check_migration_id(migration_id)
        guest = self.guest(guest_id)
        self._check_movable(guest)
        source = self.node(guest.node_id)
        if destination:
            self.node(destination)  # NOT_FOUND before any node call
        facts = await self._source_facts(guest)
        self._check_movable(guest)
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
        async with self.reconcile_lock:
            self._check_movable(guest)
            if migration_id and self.store.migration_id_taken(migration_id):
                raise AlreadyExists(f"migration id {migration_id} is already used for another request")
            if migration_id:
                mid = MigrationId(migration_id)
            else:
                while self.store.migration_id_taken(
                    mid := MigrationId(f"mig-{self.store.next_number('migration')}")
                ):
                    pass
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
            journal = Journal(
                mid,
                guest.guest_id,
                VmRef(guest.node_id, guest.vm_id),
                VmRef(dst.node_id, migration_vm_id(guest.guest_id, mid)),
                guest.generation + 1,
            )
            self.migrations[mid] = record
            self.journals[mid] = journal
            guest.migrating = mid
            self.persist_migration(record, journal)
            self.publish_migration(record)
            self._tasks[mid] = asyncio.create_task(self._run(record, guest, journal), name=f"migration-{mid}")
        if wait:
            await self.wait(record)
        return record

    def _check_movable(self, guest: GuestRecord) -> None:
        if guest.migrating:
            raise Aborted(f"guest {guest.guest_id} is already migrating ({guest.migrating})")
        if guest.state is GuestState.LOST:
            raise FailedPrecondition(f"guest {guest.guest_id} is lost: {guest.reason}")
        if guest.state is GuestState.CREATING:
            raise Aborted(f"guest {guest.guest_id} is being created")

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
        self.admission.cancel(record)
        return record

    # --- what the executor and the reconciler call ------------------------------

    def persist_migration(
        self, record: MigrationRecord, journal: Journal, guest: GuestRecord | None = None
    ) -> None:
        """Commit a record, its journal step and (when it moved) its guest, in one transaction."""
        self.journals[journal.migration_id] = journal
        with self.store.transaction():
            self.store.put_migration(record)
            self.store.put_journal(journal)
            if guest is not None:
                self.persist_guest(guest)

    def publish_migration(self, record: MigrationRecord, step: str = "") -> None:
        self.publisher.migration(record, step)

    def publish_step(self, record: MigrationRecord, step: str) -> None:
        self.publisher.migration(record, step)

    def advance_phase(self, record: MigrationRecord, phase: Phase, *, publish: bool = True) -> None:
        record.advance(phase)
        if publish:
            self.publisher.migration(record)

    def busy(self) -> set[GuestId]:
        """Guests this process is creating or migrating right now."""
        running = {self.migrations[m].guest_id for m, t in self._tasks.items() if not t.done()}
        return running | self.creating

    def apply_resolution(self, res: Resolution) -> None:
        """Commit what reconciliation decided (its node actions have all succeeded)."""
        with self.store.transaction():
            for placement in res.guests:
                self._apply_guest(placement)
            for j in res.migrations:
                self._apply_journal(j)

    def _apply_guest(self, p: GuestPlacement) -> None:
        g = self.guests.get(p.guest_id)
        if g is None:
            return
        if p.state in (GuestState.FAILED, GuestState.DESTROYED):
            self.forget_guest(p.guest_id)
            log.info("guest_creation_rolled_back", guest_id=p.guest_id, reason=p.reason)
            return
        was = g.state
        g.node_id, g.vm_id, g.state, g.generation, g.reason = (
            p.vm.node_id,
            p.vm.vm_id,
            p.state,
            p.generation,
            p.reason,
        )
        self.persist_guest(g)
        if p.state is GuestState.LOST and was is not GuestState.LOST:
            log.warning("guest_lost", guest_id=g.guest_id, node_id=g.node_id, reason=p.reason)
            node = self.pool.nodes.get(g.node_id)
            if node is not None:
                self.publish_node(node)

    def _apply_journal(self, j: Journal) -> None:
        self.journals[j.migration_id] = j
        record = self.migrations.get(j.migration_id)
        guest = self.guests.get(j.guest_id)
        if guest is not None and guest.migrating == j.migration_id:
            guest.migrating = None
        if record is None:
            self.store.put_journal(j)
            return
        record.recovered = {
            Outcome.SUCCEEDED: "rolled_forward",
            Outcome.ROLLED_BACK: "rolled_back",
            Outcome.LOST: "lost",
        }.get(j.outcome, "")
        record.reason = j.reason if j.outcome is not Outcome.SUCCEEDED else ""
        record.ended_ns = time.monotonic_ns()
        record.finished_realtime_ns = time.time_ns()
        if guest is not None and j.outcome is Outcome.SUCCEEDED and Step.CLEANUP.value not in record.steps:
            guest.migrations += 1
            guest.history.append(guest.node_id)
            self.persist_guest(guest)
        if not record.phase.terminal:
            record.phase = Phase.SUCCEEDED if j.outcome is Outcome.SUCCEEDED else Phase.FAILED
        self.admission.release(record)
        self.persist_migration(record, j)
        log.info("migration_recovered", migration_id=j.migration_id, outcome=j.outcome.value, reason=j.reason)
        self.publish_migration(record)

    async def _run(self, record: MigrationRecord, guest: GuestRecord, journal: Journal) -> None:
        log_ = log.bind(migration_id=record.migration_id, guest_id=guest.guest_id)
        outcome = Outcome.IN_FLIGHT
        try:
            await self.admission.acquire(record)
            outcome = await MigrationExecutor(self, record, guest, journal).run()
            if outcome is Outcome.SUCCEEDED:
                log_.info(
                    "migration_succeeded",
                    source=record.source,
                    destination=record.destination,
                    method=record.method.name if record.method else None,
                    downtime_us=record.downtime_us(),
                    counter_error_ticks=record.counter_error_ticks,
                )
            elif outcome is Outcome.ROLLED_BACK:
                if record.cancel_requested:
                    record.cancelled = True
                    self.persist_migration(record, self.journals[record.migration_id])
                    log_.info("migration_cancelled")
                else:
                    log_.warning("migration_failed", reason=record.reason)
        except Cancelled:
            record.cancelled = True
            self._fail(record, "cancelled by request; the guest stays on the source")
            log_.info("migration_cancelled")
        except ControllerError as err:
            self._fail(record, err.message)
            log_.warning("migration_failed", reason=err.message)
        finally:
            if (
                outcome is not Outcome.IN_FLIGHT
                or self.journals[record.migration_id].outcome is not Outcome.IN_FLIGHT
            ):
                guest.migrating = None
            self._tasks.pop(record.migration_id, None)
            if record.phase.terminal or record.phase is Phase.PENDING:
                # Held in doubt, it keeps its slot until reconciliation finishes it.
                self.admission.release(record)

    def _fail(self, record: MigrationRecord, reason: str) -> None:
        """A migration refused before anything was sent to a node."""
        record.reason = reason
        record.ended_ns = time.monotonic_ns()
        record.finished_realtime_ns = time.time_ns()
        if not record.phase.terminal:
            self.advance_phase(record, Phase.FAILED)
        self.persist_migration(record, self.journals[record.migration_id])


@dataclass(frozen=True, slots=True)
class _SourceFacts:
    """Read from the source before a migration is accepted."""

    reg_ids: tuple[int, ...]  # the source kernel's KVM_GET_REG_LIST (vCPU 0)
    uses_ptimer: bool  # the guest uses its physical timer


__all__ = ["Cluster", "MigrationEventRecord", "TransferHook", "node_load"]
