"""The journaled migration machine (controller.core.machine): every transition, every failure at every step.

Edge cases covered:
- the happy path PREPARE -> ... -> CLEANUP -> SUCCEEDED, each journal naming the command it stands for
- FAILED, UNREACHABLE and CANCELLED at each of PREPARE..TRANSFER roll back: destroy the destination
  VM, resume the source only once PAUSE was journaled; the rollback then finishes ROLLED_BACK
  whatever it gets back (leftovers are reconciliation's)
- RESUME (one restore-and-resume batch): a definite failure rolls back; no answer holds (in
  doubt); a cancel is refused
- CLEANUP: OK succeeds; the destination VM gone rolls back to the source; no answer holds
- advancing a finished or unstarted journal, or starting twice, is refused
- a node call counts as never sent (so not done: a definite failure) only when no connection
  could be made, never on a timeout or a connection lost mid-call
- command_for(journal) re-derives the command a journal stands for (what recovery re-sends)
"""

from __future__ import annotations

import pytest

from controller.core import machine as m
from controller.core.machine import PIPELINE, Journal, Outcome, Result, VmRef, advance, command_for, start
from controller.core.migration import Step
from controller.core.model import GuestId, MigrationId, NodeId

SRC = VmRef(NodeId("a"), "g@0")
DST = VmRef(NodeId("b"), "g@m1")
J0 = Journal(MigrationId("m1"), GuestId("g"), SRC, DST, generation=1)
BEFORE_RESUME = (Step.PREPARE, Step.PAUSE, Step.SNAPSHOT, Step.TRANSFER)


def at(step: Step) -> Journal:
    j, _ = start(J0)
    while j.step is not step:
        j, _ = advance(j, Result.OK)
    return j


def test_happy_path_journals_every_step_before_its_command() -> None:
    j, cmd = start(J0)
    seen = [(j.step, cmd)]
    while not isinstance(cmd, m.Finish):
        j, cmd = advance(j, Result.OK)
        seen.append((j.step, cmd))
    assert seen == [
        (Step.PREPARE, m.Prepare(SRC, DST, GuestId("g"), MigrationId("m1"), 1)),
        (Step.PAUSE, m.Pause(SRC)),
        (Step.SNAPSHOT, m.Snapshot(SRC)),
        (Step.TRANSFER, m.Transfer(DST)),
        (Step.RESUME, m.Resume(DST)),
        (Step.CLEANUP, m.Cleanup(SRC, DST)),
        (Step.CLEANUP, m.Finish(Outcome.SUCCEEDED)),
    ]
    assert j.outcome is Outcome.SUCCEEDED
    assert [s for s, _ in seen[:-1]] == list(PIPELINE)


@pytest.mark.parametrize("failure", [Result.FAILED, Result.UNREACHABLE, Result.CANCELLED])
@pytest.mark.parametrize("step", BEFORE_RESUME)
def test_failure_before_resume_rolls_back(step: Step, failure: Result) -> None:
    j, cmd = advance(at(step), failure, "boom")
    assert j.step is Step.ROLLBACK and j.outcome is Outcome.IN_FLIGHT and j.reason == "boom"
    assert cmd == m.Rollback(DST, None if step is Step.PREPARE else SRC)
    for rollback_result in Result:
        done, fin = advance(j, rollback_result)
        assert fin == m.Finish(Outcome.ROLLED_BACK) and done.outcome is Outcome.ROLLED_BACK
        assert done.reason == "boom"


def test_resume_definite_failure_rolls_back() -> None:
    j, cmd = advance(at(Step.RESUME), Result.FAILED, "EINVAL")
    assert (j.step, cmd) == (Step.ROLLBACK, m.Rollback(DST, SRC))


def test_resume_without_answer_is_held_in_doubt() -> None:
    j, cmd = advance(at(Step.RESUME), Result.UNREACHABLE, "timeout")
    assert cmd == m.Hold("timeout")
    assert j.step is Step.RESUME and j.outcome is Outcome.IN_FLIGHT and m.told_to_resume(j.step)
    assert not m.destination_ran(j.step)  # recovery asks the destination whether it runs


def test_resume_cannot_be_cancelled() -> None:
    with pytest.raises(ValueError, match="cannot be cancelled"):
        advance(at(Step.RESUME), Result.CANCELLED)


def test_cleanup() -> None:
    j, cmd = advance(at(Step.CLEANUP), Result.OK)
    assert cmd == m.Finish(Outcome.SUCCEEDED) and j.outcome is Outcome.SUCCEEDED
    # The destination's host lost the VM: back to the paused source, the one complete copy.
    j, cmd = advance(at(Step.CLEANUP), Result.FAILED, "no vm")
    assert (j.step, cmd, j.reason) == (Step.ROLLBACK, m.Rollback(DST, SRC), "no vm")
    assert advance(j, Result.OK)[0].outcome is Outcome.ROLLED_BACK
    j, cmd = advance(at(Step.CLEANUP), Result.UNREACHABLE, "timeout")
    assert cmd == m.Hold("timeout") and j.step is Step.CLEANUP and j.outcome is Outcome.IN_FLIGHT
    with pytest.raises(ValueError, match="cannot be cancelled"):
        advance(at(Step.CLEANUP), Result.CANCELLED)


def test_refusals() -> None:
    with pytest.raises(ValueError, match="not started"):
        advance(J0, Result.OK)
    with pytest.raises(ValueError, match="already started"):
        start(at(Step.PAUSE))
    done, _ = advance(at(Step.CLEANUP), Result.OK)
    with pytest.raises(ValueError, match="already ended"):
        advance(done, Result.OK)
    with pytest.raises(ValueError, match="not started"):
        command_for(J0)


@pytest.mark.parametrize("step", [*PIPELINE, Step.ROLLBACK])
def test_command_for_is_what_advance_returned(step: Step) -> None:
    if step is Step.ROLLBACK:
        j, cmd = advance(at(Step.SNAPSHOT), Result.FAILED)
    else:
        j = at(step)
        prev = PIPELINE[PIPELINE.index(step) - 1] if step is not Step.PREPARE else None
        cmd = start(J0)[1] if prev is None else advance(at(prev), Result.OK)[1]
    assert command_for(j) == cmd
    assert m.told_to_resume(step) == (step in (Step.RESUME, Step.CLEANUP))
    assert m.destination_ran(step) == (step is Step.CLEANUP)
    assert m.source_possibly_paused(step) == (step is not Step.PREPARE)


def test_never_sent_is_only_a_connection_that_failed() -> None:
    from controller.core.errors import NodeCallError

    refused = "failed to connect to all addresses; last error: UNKNOWN: Connection refused"
    assert NodeCallError("b", "Batch", "UNAVAILABLE", None, refused).never_sent
    assert not NodeCallError("b", "Batch", "UNAVAILABLE", None, "Socket closed").never_sent
    assert not NodeCallError("b", "Batch", "DEADLINE_EXCEEDED", None, "Deadline Exceeded").never_sent
