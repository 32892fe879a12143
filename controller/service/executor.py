"""Runs one migration's commands (controller.core.machine) against the two nodes.

Each transition the machine returns is committed to the state file before its command
is sent, so after a crash the journal says exactly how far the migration got (the
reconciler finishes it from there). The guest is never lost and never runs twice: until
the destination is told to resume, any failure resumes the source unchanged.

Calls ride in one batch per step, which keeps the downtime window at two round trips: the
source's register reads go with the pause (PAUSE), and the destination's restore goes
with its resume, last in the batch (RESUME): a batch stops at its first failing call, so
a destination that runs was restored completely, and one whose batch failed does not run.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import structlog
from kvmtimer.v1 import node_pb2 as pb

from controller.clients.node import NodeClient
from controller.core.errors import ControllerError, FailedPrecondition, NodeCallError, Unavailable
from controller.core.machine import (
    Cleanup,
    Command,
    Finish,
    Hold,
    Journal,
    Outcome,
    Pause,
    Prepare,
    Result,
    Resume,
    Rollback,
    Snapshot,
    Transfer,
    advance,
    start,
    told_to_resume,
)
from controller.core.migration import (
    Method,
    MigrationRecord,
    Phase,
    RegisterSet,
    RegWrite,
    SourceSnapshot,
    Step,
    check_state_loss,
    choose_method,
    register_set,
)
from controller.core.model import GuestRecord, NodeId
from node.core.clock import NS_PER_S, U64_MASK
from node.core.timer import DEFAULT_PPI, TimerId
from node.core.uapi import KVM_ARM_VCPU_TIMER_PHYS_OFFSET, OneReg, TimerAttr

if TYPE_CHECKING:
    from controller.service.cluster import Cluster

log = structlog.get_logger("kvmtimer.controller")

TransferHook = Callable[[MigrationRecord], Awaitable[None]]
# Test-mode fault injection: awaited right after a step is committed, before its command is sent.
FaultHook = Callable[[MigrationRecord, Step], Awaitable[None]]


# Steps journaled while the source is paused and the destination not yet resumed (the guest's
# downtime): their commits carry the journal row alone.
_WHILE_STOPPED = (Step.SNAPSHOT, Step.TRANSFER, Step.RESUME)


class Cancelled(Exception):
    """A cancel was requested at a step boundary."""


def node_failure(err: NodeCallError) -> ControllerError:
    if err.unreachable:
        return Unavailable(err.message)
    return FailedPrecondition(err.message)


@dataclass(slots=True)
class _Carry:
    """What one command hands to the next, in memory only (a restart rolls back or forward)."""

    src_ids: tuple[int, ...] = ()
    ppis: dict[TimerId, int] | None = None
    precopy: pb.WorkloadState | None = None
    has_workload: bool = False
    dst_ids: tuple[int, ...] = ()
    regs: RegisterSet | None = None
    source_realtime_offset_ns: int = 0
    entries: tuple[tuple[int, int], ...] = ()
    read_phys_attr: bool = False
    snap: list[pb.BatchResult] | None = None
    snapshot: SourceSnapshot | None = None
    timer_regs: tuple[RegWrite, ...] = ()
    workload_state: pb.WorkloadState | None = None


class MigrationExecutor:
    """Drives one migration from its journal to Finish (or Hold)."""

    def __init__(
        self, cluster: Cluster, record: MigrationRecord, guest: GuestRecord, journal: Journal
    ) -> None:
        self.c = cluster
        self.r = record
        self.guest = guest
        self.j = journal
        self.carry = _Carry()

    def _commit(self, j: Journal, *, guest: bool = False) -> None:
        self.j = j
        self.r.journal_step = "" if j.step is None else j.step.value
        if j.step in _WHILE_STOPPED and j.outcome is Outcome.IN_FLIGHT and not guest:
            # The guest is stopped: commit only the journal row (what recovery reads, and all
            # it reads); the record, a report, is written with the next step outside the window.
            self.c.journals[j.migration_id] = j
            self.c.store.put_journal(j)
            return
        self.c.persist_migration(self.r, j, self.guest if guest else None)

    async def run(self) -> Outcome:
        """Checks, then the machine until it finishes; the outcome (IN_FLIGHT when held in doubt)."""
        r, c = self.r, self.c
        assert r.destination is not None and r.method is not None
        try:
            if r.cancel_requested:
                raise Cancelled()
            c.advance_phase(r, Phase.SCHEDULING)
            source, dst = c.pool.node(r.source), c.pool.node(r.destination)
            if not dst.healthy:
                raise FailedPrecondition(f"destination {dst.node_id} is down: {dst.last_error}")
            if not source.healthy:
                raise FailedPrecondition(f"source {source.node_id} is down: {source.last_error}")
            choose_method(source.features, dst.features, r.method, destination_id=dst.node_id)
        except (Cancelled, ControllerError) as err:
            # Nothing was sent to any node: the journal never started.
            done = dataclasses.replace(self.j, outcome=Outcome.ROLLED_BACK)
            self._commit(done)
            raise err from None
        c.advance_phase(r, Phase.SCHEDULED)
        j, cmd = start(self.j)
        self._enter(j)
        while not isinstance(cmd, Finish | Hold):
            result, reason = await self._attempt(cmd)
            if result is Result.OK and r.cancel_requested and not told_to_resume(j.step):
                result, reason = Result.CANCELLED, "cancelled by request; the guest stays on the source"
            j, cmd = advance(j, result, reason)
            if isinstance(cmd, Hold):
                self.j = j  # the same step, held: committed below with the record
                break
            self._enter(j)
        if isinstance(cmd, Hold):
            r.reason = f"in doubt: {cmd.reason}; waiting for the nodes to tell"
            log.warning("migration_held", migration_id=r.migration_id, reason=cmd.reason)
            c.persist_migration(r, j)  # the record too (a RESUME commit carried the journal alone)
            c.publish_migration(r)
            return Outcome.IN_FLIGHT
        return j.outcome

    def _enter(self, j: Journal) -> None:
        """Record, commit and publish the transition to `j` (before its command is sent)."""
        r, c = self.r, self.c
        if j.outcome is not Outcome.IN_FLIGHT:
            r.ended_ns = time.monotonic_ns()
            r.finished_realtime_ns = time.time_ns()
            if j.outcome is not Outcome.SUCCEEDED:
                r.reason = r.reason or j.reason
            r.advance(Phase.SUCCEEDED if j.outcome is Outcome.SUCCEEDED else Phase.FAILED)
            self._commit(j)
            c.publish_migration(r)
            return
        assert j.step is not None
        if j.step is Step.PREPARE:
            c.advance_phase(r, Phase.PREPARING_TARGET)
        elif j.step is Step.PAUSE:
            r.target_ready_ns = r.target_ready_ns or time.monotonic_ns()
            c.advance_phase(r, Phase.TARGET_READY)
            c.advance_phase(r, Phase.RUNNING)
        elif j.step is Step.ROLLBACK:
            r.reason = j.reason
        r.steps.append(j.step.value)
        g = self.guest
        moved = j.step is Step.CLEANUP
        if moved:
            # The destination runs the guest: it lives there from now on (same commit).
            g.node_id, g.vm_id, g.generation = j.destination.node_id, j.destination.vm_id, j.generation
            g.migrations += 1
            g.history.append(g.node_id)
        elif j.step is Step.ROLLBACK and (g.node_id, g.vm_id) == (j.destination.node_id, j.destination.vm_id):
            # Back from the destination (its host lost the guest before cleanup).
            g.node_id, g.vm_id, g.generation = j.source.node_id, j.source.vm_id, j.generation - 1
            g.migrations -= 1
            g.history.append(g.node_id)
            moved = True
        self._commit(j, guest=moved)
        c.publish_step(r, j.step.value)

    async def _attempt(self, cmd: Command) -> tuple[Result, str]:
        """Run one command; what happened, as the machine's Result."""
        r = self.r
        try:
            if self.c.fault_hook is not None and self.j.step is not None:
                await self.c.fault_hook(r, self.j.step)
            await self._execute(cmd)
        except Cancelled:
            return Result.CANCELLED, "cancelled by request; the guest stays on the source"
        except NodeCallError as err:
            if err.unreachable:
                self.c.pool.call_failed(NodeId(err.node_id), err.code, err.message)
                # A call that never reached the node was not done: a definite failure (the
                # destination never resumed). Not for CLEANUP, where only an answer can say
                # that the destination lost the guest.
                if not err.never_sent or isinstance(cmd, Cleanup):
                    return Result.UNREACHABLE, node_failure(err).message
            return Result.FAILED, err.message
        except ControllerError as err:
            return Result.FAILED, err.message
        except Exception as err:
            log.exception("migration_internal_error", migration_id=r.migration_id)
            return Result.FAILED, f"internal error: {err!r}"
        return Result.OK, ""

    async def _execute(self, cmd: Command) -> None:
        c = self.c
        match cmd:
            case Prepare():
                await self._prepare(c.pool.client(cmd.source.node_id), c.pool.client(cmd.destination.node_id))
            case Pause(vm=vm):
                await self._pause(c.pool.client(vm.node_id))
            case Snapshot():
                self._snapshot()
            case Transfer():
                if c.transfer_hook is not None:
                    await c.transfer_hook(self.r)
            case Resume(vm=vm):
                await self._restore_and_resume(c.pool.client(vm.node_id))
            case Cleanup(vm=vm):
                await self._cleanup(c.pool.client(vm.node_id))
            case Rollback():
                await self._rollback(cmd)
            case _:
                raise AssertionError(cmd)

    # --- the commands --------------------------------------------------------------

    async def _prepare(self, src: NodeClient, dst: NodeClient) -> None:
        """Everything that does not need the guest stopped: read the source, build the destination."""
        r, guest, k = self.r, self.guest, self.carry
        assert r.method is not None and r.destination is not None
        vm, n = self.j.source.vm_id, guest.vcpus
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
        k.src_ids = tuple(before.pop(0).get_reg_list.reg_ids)
        k.ppis = {
            TimerId.VTIMER: before[0].get_device_attr.value,
            TimerId.PTIMER: before[1].get_device_attr.value,
        }
        k.precopy = before.pop().save_workload
        k.has_workload = k.precopy.HasField("spec")
        r.traps_before = sum(res.get_vcpu_state.trap_count for res in before[2:])
        r.source_traps_cntpct = before[2].get_vcpu_state.traps_cntpct
        dst_vm = self.j.destination.vm_id
        owner = pb.VmOwner(guest_id=guest.guest_id, migration_id=r.migration_id, generation=self.j.generation)
        prepare = [pb.BatchCall(create_vm=pb.CreateVmRequest(vm_id=dst_vm, owner=owner))]
        prepare += [
            pb.BatchCall(create_vcpu=pb.CreateVcpuRequest(vm_id=dst_vm, vcpu_index=i)) for i in range(n)
        ]
        prepare += [
            pb.BatchCall(set_device_attr=pb.SetDeviceAttrRequest(vm_id=dst_vm, group=1, attr=int(t), value=v))
            for t, v in k.ppis.items()
            if v != DEFAULT_PPI[t]
        ]
        if k.has_workload:
            prepare.append(pb.BatchCall(load_workload=pb.LoadWorkloadRequest(vm_id=dst_vm, state=k.precopy)))
        # The destination kernel's register list: with the source's, it decides what is carried.
        prepare.append(pb.BatchCall(get_reg_list=pb.GetRegListRequest(vm_id=dst_vm, vcpu_index=0)))
        prepared = await dst.batch(prepare)
        k.dst_ids = tuple(prepared[-1].get_reg_list.reg_ids)
        k.regs = register_set(k.src_ids, k.dst_ids, r.method, uses_ptimer=r.guest_uses_ptimer)
        src_node, dst_node = self.c.pool.node(r.source), self.c.pool.node(r.destination)
        check_state_loss(
            k.regs,
            uses_ptimer=r.guest_uses_ptimer,
            allow_state_loss=r.allow_state_loss,
            source=(src_node.node_id, src_node.features),
            destination=(dst_node.node_id, dst_node.features),
            method=r.method,
        )
        r.not_carried = list(k.regs.not_carried)
        r.target_ready_ns = time.monotonic_ns()

    async def _pause(self, src: NodeClient) -> None:
        """Stop the source and read the guest state in the same round trip."""
        r, k, n = self.r, self.carry, self.guest.vcpus
        assert k.regs is not None and k.precopy is not None
        vm = self.j.source.vm_id
        src_node = self.c.pool.node(r.source)
        # Save every register the source lists, on every vCPU (what QEMU does).
        k.entries = tuple((i, reg) for i in range(n) for reg in k.regs.saved)
        # Before 6.4 there is no PTIMER_CNT: the guest physical counter is H minus the
        # series' physical offset (its vCPU attribute), or H itself on 5.15.
        k.read_phys_attr = OneReg.PTIMER_CNT not in k.regs.saved and src_node.features.has_vcpu_offsets
        extra = (
            [
                pb.BatchCall(
                    get_device_attr=pb.DeviceAttrRequest(
                        vm_id=vm, group=1, attr=KVM_ARM_VCPU_TIMER_PHYS_OFFSET
                    )
                )
            ]
            if k.read_phys_attr
            else []
        )
        r.stop_sent_ns = time.monotonic_ns()
        snap = await src.batch(
            [
                pb.BatchCall(pause_vm=pb.PauseVmRequest(vm_id=vm)),
                *extra,
                pb.BatchCall(
                    get_regs=pb.GetRegsRequest(
                        vm_id=vm, regs=[pb.RegValue(vcpu_index=i, reg_id=reg) for i, reg in k.entries]
                    )
                ),
                pb.BatchCall(
                    save_workload=pb.SaveWorkloadRequest(
                        vm_id=vm,
                        delta=k.has_workload,
                        since_reads={v.vcpu_index: v.reads for v in k.precopy.vcpus},
                    )
                ),
            ]
        )
        paused = snap.pop(0).pause_vm
        r.paused_realtime_ns, r.paused_host_counter = paused.realtime_ns, paused.host_counter
        k.snap = snap

    def _snapshot(self) -> None:
        """The source snapshot from the paused source's reads (no I/O of its own)."""
        r, k, n = self.r, self.carry, self.guest.vcpus
        assert k.snap is not None and k.regs is not None
        snap = list(k.snap)
        phys_offset = snap.pop(0).get_device_attr.value if k.read_phys_attr else 0
        got = snap[0].get_regs
        saved = {entry: v.value for entry, v in zip(k.entries, got.regs, strict=True)}
        k.snapshot = SourceSnapshot(
            cntvct=saved[(0, OneReg.TIMER_CNT)],
            cntpct=saved.get((0, OneReg.PTIMER_CNT), (got.host_counter - phys_offset) & U64_MASK),
            host_counter=got.host_counter,
            realtime_ns=got.realtime_ns,
            cntfrq_hz=self.c.pool.node(r.source).features.cntfrq_hz,
        )
        k.source_realtime_offset_ns = got.realtime_offset_ns
        r.source_voffset, r.source_poffset = k.snapshot.voffset, k.snapshot.poffset
        k.timer_regs = tuple(RegWrite(i, reg, saved[(i, reg)]) for i in range(n) for reg in k.regs.restored)
        k.workload_state = snap[1].save_workload

    async def _restore_and_resume(self, dst: NodeClient) -> None:
        """Write the guest state into the paused destination VM and resume it, in one batch (the
        resume last: it runs only if everything before it succeeded). The destination applies the
        source's counter record at its own instant: it credits the realtime that passed as its
        clock sees it then (never negative), with its kernel's interface."""
        r, k = self.r, self.carry
        assert r.method is not None and k.snapshot is not None
        dst_vm = self.j.destination.vm_id
        restore = [pb.BatchCall(set_regs=_set_regs(dst_vm, k.timer_regs))]
        if k.has_workload:
            restore.append(
                pb.BatchCall(
                    load_workload=pb.LoadWorkloadRequest(vm_id=dst_vm, state=k.workload_state, merge=True)
                )
            )
        restore.append(pb.BatchCall(apply_counter_record=_apply_request(dst_vm, k.snapshot, r.method)))
        restore.append(pb.BatchCall(resume_vm=pb.ResumeVmRequest(vm_id=dst_vm)))
        restored = await dst.batch(restore)
        r.resume_acked_ns = time.monotonic_ns()
        r.resumed_realtime_ns = restored[-1].resume_vm.realtime_ns
        credit = restored[-2].apply_counter_record
        r.applied_as, r.elapsed_ticks = credit.applied_as, credit.elapsed_ticks
        r.destination_voffset, r.destination_poffset = credit.voffset, credit.poffset
        r.realtime_skew_ns = credit.realtime_offset_ns - k.source_realtime_offset_ns

    async def _cleanup(self, src: NodeClient) -> None:
        """Read how the move went on the destination (which also proves its VM is there and
        runs), then drop the stopped source VM. A destination that lost the VM raises, and the
        machine rolls back to the source instead."""
        r, n = self.r, self.guest.vcpus
        dst_vm = self.j.destination.vm_id
        after = await self.c.pool.client(self.j.destination.node_id).batch(
            [
                *(
                    pb.BatchCall(get_vcpu_state=pb.GetVcpuStateRequest(vm_id=dst_vm, vcpu_index=i))
                    for i in range(n)
                ),
                pb.BatchCall(get_guest_observations=pb.GetGuestObservationsRequest(vm_id=dst_vm)),
            ]
        )
        try:
            # The source's counter now ends the downtime on the clock that started it.
            cleaned = await src.batch(
                [
                    pb.BatchCall(get_clock=pb.GetClockRequest()),
                    pb.BatchCall(destroy_vm=pb.DestroyVmRequest(vm_id=self.j.source.vm_id)),
                ]
            )
            ticks = (cleaned[0].get_clock.host_counter - (r.paused_host_counter or 0)) & U64_MASK
            r.stop_bound_ns = ticks * NS_PER_S // self.c.pool.node(r.source).features.cntfrq_hz
        except NodeCallError as err:
            # A source VM left behind is a leftover of a finished migration: reconciliation removes it.
            log.warning("source_cleanup_failed", migration_id=r.migration_id, error=err.message)
        self._record_outcome(after)

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

    async def _rollback(self, cmd: Rollback) -> None:
        """Destroy the destination VM, then resume the source guest unchanged (best effort:
        what cannot be reached now, reconciliation finishes when the node answers)."""
        r, c = self.r, self.c
        if cmd.destroy is not None:
            try:
                await c.pool.client(cmd.destroy.node_id).destroy_vm(cmd.destroy.vm_id)
            except NodeCallError as err:
                if not (err.code == "NOT_FOUND" and err.errno_name is None):
                    log.warning("rollback_destroy_failed", migration_id=r.migration_id, error=err.message)
        if cmd.resume is not None:
            try:
                await c.pool.client(cmd.resume.node_id).resume(cmd.resume.vm_id)
            except NodeCallError as err:
                log.error("rollback_resume_failed", migration_id=r.migration_id, error=err.message)
        log.info("migration_rolled_back", migration_id=r.migration_id, cause=self.j.reason)


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
