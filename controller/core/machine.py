"""The migration as a journaled state machine: given the journal and the last result,
the next command, as frozen data. Pure: no I/O, no clock.

    PREPARE -> PAUSE -> SNAPSHOT -> TRANSFER -> RESUME -> CLEANUP -> done
       \\________\\__________\\__________\\_________\\_________\\-> ROLLBACK -> done

The executor (controller/service/) commits the journal `advance()` returns *before*
it sends the command, so after any crash the journal's step says how far the
migration may have got: a step is "possibly done" once it is journaled.

RESUME is one node call: the destination's batch restores the snapshot (registers,
workload, counter record) and resumes the VM last. A batch stops at its first failing
call, so an answered failure leaves the destination VM not running, and a destination
VM that runs was restored completely. Restore and resume used to be two journaled
steps: one round trip more inside the guest's downtime, for nothing recovery needs.

Policy (issue #11): the guest belongs to the source until the destination runs it. A
failure at PREPARE..TRANSFER rolls back (destroy the destination VM, resume the
source), and so does a definite failure at RESUME (the destination answered that its
batch failed, or the batch never reached it: no connection could be made; either way its
VM does not run). An unanswered RESUME is in doubt: the machine holds and leaves the
decision to reconciliation (controller.core.recovery), which asks the destination:
its VM runs -> roll forward; otherwise -> roll back. CLEANUP is journaled once the
destination answered that it runs the guest; it first checks that it still does: if
its host crashed meanwhile, the paused source (the one complete copy left) is resumed
instead of destroyed, as reconciliation would; no answer holds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from controller.core.migration import Step
from controller.core.model import GuestId, MigrationId, NodeId

# The forward pipeline, in order.
PIPELINE: tuple[Step, ...] = (
    Step.PREPARE,
    Step.PAUSE,
    Step.SNAPSHOT,
    Step.TRANSFER,
    Step.RESUME,
    Step.CLEANUP,
)


def told_to_resume(step: Step | None) -> bool:
    """Was the destination possibly told to resume (journal step RESUME or CLEANUP)?"""
    return step in (Step.RESUME, Step.CLEANUP)


def destination_ran(step: Step | None) -> bool:
    """Did the destination answer that it runs the guest, restored (journal step CLEANUP)?"""
    return step is Step.CLEANUP


def source_possibly_paused(step: Step | None) -> bool:
    """Was the source possibly paused (PAUSE journaled, not yet cleaned up)?"""
    return step is not None and step is not Step.PREPARE


class Outcome(StrEnum):
    """Where a migration ended."""

    IN_FLIGHT = "in_flight"  # not finished (or held in doubt)
    SUCCEEDED = "succeeded"  # the guest runs on the destination
    ROLLED_BACK = "rolled_back"  # the guest runs on the source, unchanged
    LOST = "lost"  # the host holding the only copy crashed


@dataclass(frozen=True, slots=True)
class VmRef:
    """One VM on one node."""

    node_id: NodeId  # the node
    vm_id: str  # the VM's id there


@dataclass(frozen=True, slots=True)
class Journal:
    """What is persisted about one migration's progress (the migration journal row)."""

    migration_id: MigrationId  # never reused
    guest_id: GuestId  # the guest moving
    source: VmRef  # the guest's VM before the move
    destination: VmRef  # the VM the move creates
    generation: int  # the destination VM's owner generation (source's + 1)
    step: Step | None = None  # last journaled step (None: not started)
    outcome: Outcome = Outcome.IN_FLIGHT  # how it ended
    reason: str = ""  # why it failed or was held


class Result(StrEnum):
    """What the executor saw when it ran the last command."""

    OK = "ok"  # the command completed
    FAILED = "failed"  # the node answered with an error (it did not do the failing call)
    UNREACHABLE = "unreachable"  # no answer: the call may or may not have happened
    CANCELLED = "cancelled"  # the user cancelled at this step boundary


# --- commands (what the executor runs) -----------------------------------------------


@dataclass(frozen=True, slots=True)
class Prepare:
    """Create the paused destination VM (labelled with its owner), its vCPUs, pre-copy."""

    source: VmRef
    destination: VmRef
    guest_id: GuestId
    migration_id: MigrationId
    generation: int


@dataclass(frozen=True, slots=True)
class OnVm:
    """A command about one VM (its subclasses say what to do with it)."""

    vm: VmRef


@dataclass(frozen=True, slots=True)
class Pause(OnVm):
    """Stop the source VM and read its registers and workload delta (one batch)."""


@dataclass(frozen=True, slots=True)
class Snapshot(OnVm):
    """Build the snapshot from the paused source's reads (controller-side)."""


@dataclass(frozen=True, slots=True)
class Transfer(OnVm):
    """Carry the snapshot to the destination VM (controller-side; a hook point)."""


@dataclass(frozen=True, slots=True)
class Resume(OnVm):
    """Restore the snapshot (offsets, registers, workload) into the destination VM and resume
    it, in one node batch with the resume last: a failed batch leaves the VM not running."""


@dataclass(frozen=True, slots=True)
class Cleanup(OnVm):
    """Check that the destination VM runs, then destroy the stopped source VM `vm` (never
    before: while the destination's host may have crashed, the source is the complete copy left)."""

    destination: VmRef


@dataclass(frozen=True, slots=True)
class Rollback:
    """Destroy the destination VM (if it may exist), then resume the source (if it may be paused)."""

    destroy: VmRef | None
    resume: VmRef | None


@dataclass(frozen=True, slots=True)
class Finish:
    """Nothing left to send: record the outcome."""

    outcome: Outcome


@dataclass(frozen=True, slots=True)
class Hold:
    """In doubt (a node did not answer after RESUME): send nothing; reconciliation decides."""

    reason: str


Command = Prepare | Pause | Snapshot | Transfer | Resume | Cleanup | Rollback | Finish | Hold


def command_for(j: Journal) -> Command:
    """The command a journal at `j.step` stands for (what to (re)send for it)."""
    if j.outcome is not Outcome.IN_FLIGHT:
        return Finish(j.outcome)
    match j.step:
        case None:
            raise ValueError(f"migration {j.migration_id} has not started")
        case Step.PREPARE:
            return Prepare(j.source, j.destination, j.guest_id, j.migration_id, j.generation)
        case Step.PAUSE:
            return Pause(j.source)
        case Step.SNAPSHOT:
            return Snapshot(j.source)
        case Step.TRANSFER:
            return Transfer(j.destination)
        case Step.RESUME:
            return Resume(j.destination)
        case Step.CLEANUP:
            return Cleanup(j.source, j.destination)
        case Step.ROLLBACK:
            return Rollback(j.destination, j.source)
    raise AssertionError(j.step)


def start(j: Journal) -> tuple[Journal, Command]:
    """The first transition: journal PREPARE, then send it."""
    if j.step is not None or j.outcome is not Outcome.IN_FLIGHT:
        raise ValueError(f"migration {j.migration_id} already started ({j.step})")
    nxt = replace(j, step=Step.PREPARE)
    return nxt, command_for(nxt)


def advance(j: Journal, result: Result, reason: str = "") -> tuple[Journal, Command]:
    """The journal after the command of `j.step` gave `result`, and the command to send next.

    Precondition: `j` is in flight and started. The returned journal is what to commit
    before sending the returned command.
    """
    if j.outcome is not Outcome.IN_FLIGHT:
        raise ValueError(f"migration {j.migration_id} already ended ({j.outcome})")
    step = j.step
    if step is None:
        raise ValueError(f"migration {j.migration_id} has not started")
    if step is Step.ROLLBACK:
        # Best effort: what a rollback could not reach, reconciliation removes or resumes later.
        return _finish(j, Outcome.ROLLED_BACK, j.reason or reason)
    if step is Step.CLEANUP:
        if result is Result.OK:
            # The destination runs the guest; a source VM whose destroy failed is a leftover
            # (ours, terminal migration) that reconciliation destroys.
            return _finish(j, Outcome.SUCCEEDED, "")
        if result is Result.UNREACHABLE:
            held = replace(j, reason=reason or "destination did not answer the check before cleanup")
            return held, Hold(held.reason)
        if result is Result.CANCELLED:
            raise ValueError("a migration cannot be cancelled once the destination was told to resume")
        # The destination's VM is gone (its host crashed after the resume): the paused source
        # is the only complete copy left, so the guest goes back to it.
        nxt = replace(j, step=Step.ROLLBACK, reason=reason or "destination lost the guest before cleanup")
        return nxt, Rollback(j.destination, j.source)
    if result is Result.OK:
        nxt = replace(j, step=PIPELINE[PIPELINE.index(step) + 1])
        return nxt, command_for(nxt)
    if step is Step.RESUME and result is Result.UNREACHABLE:
        held = replace(j, reason=reason or "destination did not answer the resume")
        return held, Hold(held.reason)
    if step is Step.RESUME and result is Result.CANCELLED:
        raise ValueError("a migration cannot be cancelled once the destination was told to resume")
    # Failure (or cancel) before the destination runs: undo. The destination VM may
    # exist from PREPARE on; the source may be paused from PAUSE on. At RESUME the node
    # answered that its batch failed, so its VM does not run.
    nxt = replace(j, step=Step.ROLLBACK, reason=reason or result.value)
    return nxt, Rollback(j.destination, j.source if source_possibly_paused(step) else None)


def _finish(j: Journal, outcome: Outcome, reason: str) -> tuple[Journal, Command]:
    done = replace(j, outcome=outcome, reason=reason)
    return done, Finish(outcome)
