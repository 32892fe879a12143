"""The fault campaign's deterministic subset: every victim x every migration step once, real processes.

Edge cases covered (tests/faults/campaign.py does the checking against the nodes' own APIs):
- SIGKILL of the controller, the source node or the destination node right after each journal
  step is committed: 0 invariant violations in every cell
- the controller killed up to RESUME rolls back (at RESUME the destination's restore-and-resume
  batch was not sent: its VM does not run), at CLEANUP rolls forward
- the destination's host crashing never loses the guest (the source copy is used)
- the source's host crashing before its state was read (PREPARE, PAUSE) loses the guest, visibly
"""

from __future__ import annotations

import pytest

from tests.faults.campaign import STEPS, VICTIMS, report, run_campaign


@pytest.mark.e2e
def test_every_victim_at_every_step_once() -> None:
    cells = run_campaign(1, workers=2, verbose=False)
    # A run that could not set its fault up (its request refused while a starved node looked
    # down) injected nothing and checked nothing: that cell gets one more run, alone. A run that
    # injected its fault is never repeated, whatever it found.
    for (victim, step), cell in list(cells.items()):
        if cell.errors and not cell.runs and not cell.violations:
            cells[(victim, step)] = run_campaign(1, (step,), (victim,), verbose=False)[(victim, step)]
    assert set(cells) == {(v, s) for v in VICTIMS for s in STEPS}
    table = report(cells)
    assert all(c.runs == 1 and c.violations == 0 and c.errors == 0 for c in cells.values()), table
    for step in STEPS:
        forward = step == "cleanup"
        ctl = cells[("controller", step)]
        assert (ctl.rolled_forward, ctl.rolled_back) == ((1, 0) if forward else (0, 1)), table
        assert cells[("destination", step)].lost == 0, table
    assert cells[("source", "prepare")].lost == cells[("source", "pause")].lost == 1, table
