"""Reconciliation planning (controller.core.recovery): each rule on its own.

Edge cases covered:
- a running guest is adopted with nothing to do; a paused one is resumed; a missing one is lost
- a guest being created: adopted if its VM runs, else its VM destroyed and the creation failed
- an in-flight migration journaled at each step, with each side present / missing / silent:
  before RESUME roll back (destroy destination, then resume source); at RESUME (one
  restore-and-resume batch) roll forward only if the destination VM runs, else roll back; at
  CLEANUP roll forward (resume the destination if paused, then destroy the source); the
  destination lost by its host at or after RESUME rolls back to the source; both copies gone
  (or the source gone and the destination never ran) loses the guest; a silent node makes it wait
- a VM of a known guest that no one needs is destroyed; a VM of an unknown guest or an unknown
  migration is reported as an orphan and never destroyed
- busy guests (being created or migrated in this process) are left alone, VMs included
- planning the state that results from applying a plan decides nothing more (idempotent)
"""

from __future__ import annotations

import pytest

from controller.core.machine import PIPELINE, Journal, Outcome, VmRef
from controller.core.migration import Step
from controller.core.model import GuestId, GuestState, MigrationId, NodeId
from controller.core.recovery import (
    DestroyVm,
    GuestPlacement,
    NodeVm,
    Orphan,
    ResumeVm,
    plan,
)

A, B = NodeId("a"), NodeId("b")
G = GuestId("g")
SRC, DST = VmRef(A, "g@0"), VmRef(B, "g@m1")
GUEST = GuestPlacement(G, SRC, GuestState.RUNNING)
SRC_VM = NodeVm("g@0", True, "g")
DST_VM = NodeVm("g@m1", False, "g", "m1", 1)
DST_RUNNING = NodeVm("g@m1", True, "g", "m1", 1)


def forward(step: Step, dst: NodeVm) -> bool:
    """The rule: forward once the destination ran the guest (CLEANUP), or runs it now (RESUME)."""
    return step is Step.CLEANUP or (step is Step.RESUME and dst.running)


def journal(step: Step) -> Journal:
    return Journal(MigrationId("m1"), G, SRC, DST, 1, step=step)


def test_running_guest_is_adopted_paused_resumed_missing_lost() -> None:
    assert plan([GUEST], [], {A: [SRC_VM]}).settled
    paused = plan([GUEST], [], {A: [NodeVm("g@0", False, "g")]})
    assert paused.resolutions[0].actions == (ResumeVm(SRC),)
    lost = plan([GUEST], [], {A: []}).resolutions[0]
    assert lost.guests[0].state is GuestState.LOST and "no longer has" in lost.guests[0].reason
    silent = plan([GUEST], [], {A: None}).resolutions[0]
    assert silent.waiting and not silent.actions and not silent.guests


@pytest.mark.parametrize("running", [True, False])
def test_guest_being_created(running: bool) -> None:
    creating = GuestPlacement(G, SRC, GuestState.CREATING)
    r = plan([creating], [], {A: [NodeVm("g@0", running, "g")]}).resolutions[0]
    if running:
        assert r.actions == () and r.guests[0].state is GuestState.RUNNING
    else:
        assert r.actions == (DestroyVm(SRC, "unfinished creation"),)
        assert r.guests[0].state is GuestState.FAILED
    gone = plan([creating], [], {A: []}).resolutions[0]
    assert gone.guests[0].state is GuestState.FAILED and not gone.actions


@pytest.mark.parametrize("dst", [DST_VM, DST_RUNNING])
@pytest.mark.parametrize("step", [*PIPELINE, Step.ROLLBACK])
def test_in_flight_migration_with_both_copies(step: Step, dst: NodeVm) -> None:
    paused_src = NodeVm("g@0", False, "g")
    r = plan([GUEST], [journal(step)], {A: [paused_src], B: [dst]}).resolutions[0]
    if forward(step, dst):
        resume = () if dst.running else (ResumeVm(DST),)
        assert r.actions == (*resume, DestroyVm(SRC, "source of a migration rolled forward"))
        assert r.guests[0].vm == DST and r.guests[0].generation == 1
        assert r.migrations[0].outcome is Outcome.SUCCEEDED
    else:
        assert r.actions == (DestroyVm(DST, "destination of a migration rolled back"), ResumeVm(SRC))
        assert r.guests[0].vm == SRC and r.migrations[0].outcome is Outcome.ROLLED_BACK
    assert r.guests[0].state is GuestState.RUNNING


@pytest.mark.parametrize("step", PIPELINE)
def test_destination_host_crashed(step: Step) -> None:
    r = plan([GUEST], [journal(step)], {A: [NodeVm("g@0", False, "g")], B: []}).resolutions[0]
    assert r.actions == (ResumeVm(SRC),) and r.migrations[0].outcome is Outcome.ROLLED_BACK


@pytest.mark.parametrize("dst", [DST_VM, DST_RUNNING])
@pytest.mark.parametrize("step", PIPELINE)
def test_source_host_crashed(step: Step, dst: NodeVm) -> None:
    r = plan([GUEST], [journal(step)], {A: [], B: [dst]}).resolutions[0]
    if forward(step, dst):
        assert r.migrations[0].outcome is Outcome.SUCCEEDED and r.guests[0].vm == DST
    else:
        assert r.actions == (DestroyVm(DST, "destination of a migration rolled back"),)
        assert r.guests[0].state is GuestState.LOST and r.migrations[0].outcome is Outcome.LOST


@pytest.mark.parametrize("step", PIPELINE)
def test_silent_node_makes_the_migration_wait(step: Step) -> None:
    asked = step in (Step.RESUME, Step.CLEANUP)  # the destination's answer decides
    nodes = {A: [SRC_VM], B: None} if asked else {A: None, B: [DST_VM]}
    p = plan([GUEST], [journal(step)], nodes)
    assert p.resolutions[0].waiting and not p.resolutions[0].actions
    assert {SRC, DST} <= p.needed
    assert all(not r.actions for r in p.resolutions)  # nothing of the migration destroyed


def test_leftovers_destroyed_orphans_reported() -> None:
    stale = NodeVm("g@m0", False, "g", "m0", 1)  # a finished migration's leftover
    unknown_guest = NodeVm("x@0", True, "x")
    unknown_migration = NodeVm("g@m9", False, "g", "m9", 1)
    by_hand = NodeVm("vm-1", True)
    done = Journal(MigrationId("m0"), G, SRC, VmRef(B, "g@m0"), 1, Step.ROLLBACK, Outcome.ROLLED_BACK)
    p = plan([GUEST], [done], {A: [SRC_VM], B: [stale, unknown_guest, unknown_migration, by_hand]})
    actions = [a for r in p.resolutions for a in r.actions]
    assert actions == [DestroyVm(VmRef(B, "g@m0"), "leftover of a finished operation")]
    assert p.orphans == (
        Orphan(VmRef(B, "x@0"), "x", ""),
        Orphan(VmRef(B, "g@m9"), "g", "m9"),
        Orphan(VmRef(B, "vm-1"), "", ""),
    )


def test_busy_guests_are_left_alone() -> None:
    p = plan([GUEST], [journal(Step.PAUSE)], {A: [NodeVm("g@0", False, "g")], B: [DST_VM]}, busy={G})
    assert all(not r.actions for r in p.resolutions) and p.orphans == ()


def test_resume_not_run_with_a_silent_source_waits() -> None:
    # At RESUME a destination that does not run means roll back, which needs the source.
    p = plan([GUEST], [journal(Step.RESUME)], {A: None, B: [DST_VM]})
    assert p.resolutions[0].waiting and all(not r.actions for r in p.resolutions)


@pytest.mark.parametrize("step", [Step.RESUME, Step.CLEANUP])
def test_applying_a_plan_settles(step: Step) -> None:
    nodes = {A: [NodeVm("g@0", False, "g")], B: [DST_RUNNING]}
    r = plan([GUEST], [journal(step)], nodes).resolutions[0]
    after = {A: [], B: [DST_RUNNING]}
    assert plan(list(r.guests), list(r.migrations), after).settled
    back = plan([GUEST], [journal(step)], {A: [NodeVm("g@0", False, "g")], B: [DST_VM]}).resolutions[0]
    if step is Step.RESUME:
        assert back.guests[0].vm == SRC
        assert plan(list(back.guests), list(back.migrations), {A: [SRC_VM], B: []}).settled
