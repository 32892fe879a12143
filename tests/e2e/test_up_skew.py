"""`kvmtimer up --skew NS` as a real run: node processes whose realtimes disagree on purpose.

`--skew NS` gives node-1 0, node-2 +NS, node-3 -NS (its help). A short run with --record, then:
every succeeded migration's record carries the skew between its two nodes (destination minus
source realtime) exactly; each offset-method migration's counter error is exactly that skew in
ticks (spec case 39: the guest is credited its destination's idea of the elapsed time), a by-value
one's is never positive (the guest loses the stop, its counter never runs ahead); the summary's
worst offset-method error is the largest skew moved across and every guest's own counter steps
stay non-negative (monotonic); the report built from the recording marks each offset move it
sees in the samples with that skew (its label says "(skew ...)"), the guest's counter jumping by
it, and `kvmtimer report` draws it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from kvmtimer.v1 import controller_pb2 as cpb

from controller.cli import main
from controller.telemetry.record import read_recording
from controller.telemetry.report import OFFSET_METHODS, build_report, jump_label
from tests.support.nodes import kvmtimer_command

pytestmark = pytest.mark.e2e

SKEW_NS = 1_000_000  # 1 ms: 25,000 ticks at 25 MHz
SKEWS_NS = {"node-1": 0, "node-2": SKEW_NS, "node-3": -SKEW_NS}
NS_PER_S = 1_000_000_000


def test_up_with_skewed_nodes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record = tmp_path / "telemetry.jsonl"
    argv = ["up", "--duration", "5", "--nodes", "3", "--guests", "3", "--interval", "0.25", "--seed", "3"]
    argv += ["--skew", str(SKEW_NS), "--no-mqtt", "--record", str(record)]
    done = subprocess.run(
        [*kvmtimer_command(), *argv],
        capture_output=True,
        text=True,
        timeout=180,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    (summary_line,) = [line for line in done.stdout.splitlines() if line.startswith("SUMMARY ")]
    summary = json.loads(summary_line.removeprefix("SUMMARY "))
    freq = {n["node_id"]: n["cntfrq_hz"] for n in summary["nodes"]}
    assert sorted(freq) == sorted(SKEWS_NS)

    items = list(read_recording(record))
    finals = {
        i.migration.migration.migration_id: i.migration.migration
        for i in items
        if i.WhichOneof("item") == "migration"
        and i.migration.migration.phase == cpb.MIGRATION_PHASE_SUCCEEDED
    }
    assert len(finals) == summary["migrations"]["succeeded"] > 0, summary["migrations"]
    expected_ticks: dict[str, int] = {}
    for m in finals.values():
        skew_ns = SKEWS_NS[m.destination] - SKEWS_NS[m.source]
        assert m.realtime_skew_ns == skew_ns, m
        assert m.HasField("counter_error_ticks"), m
        if m.method in OFFSET_METHODS:
            expected_ticks[m.migration_id] = skew_ns * freq[m.destination] // NS_PER_S
            assert abs(m.counter_error_ticks - expected_ticks[m.migration_id]) <= 1, m
        else:
            assert m.method == cpb.MIGRATION_METHOD_BY_VALUE and m.counter_error_ticks <= 0, m
    skewed = {mid for mid, ticks in expected_ticks.items() if ticks}
    assert skewed, "no offset-method migration between nodes of different skews"

    worst = summary["max_abs_counter_error_ticks"]["offset_methods"]
    assert abs(worst - max(abs(t) for t in expected_ticks.values())) <= 1, summary
    assert summary["all_min_steps_non_negative"] is True, summary["guests"]
    assert all(g["min_step_virtual"] >= 0 for g in summary["guests"]), summary["guests"]

    # The report marks each move it sees in the guests' samples (a move before the first sample
    # is not seen) with its record's skew, and measures the jump from the samples themselves.
    data = build_report(items)
    marks = {mark.migration_id: mark for series in data.guests for mark in series.marks}
    drawn = skewed & set(marks)
    assert drawn, f"no skewed offset-method move among the report's marks {sorted(marks)}"
    for mid in drawn:
        mark = marks[mid]
        assert mark.skew_ticks == expected_ticks[mid] and abs(mark.jump_ticks - mark.skew_ticks) <= 1, mark
        assert f"(skew {expected_ticks[mid]:+d})" in jump_label(mark, "ticks")
    png = tmp_path / "report.png"
    assert main(["report", "--from", str(record), "--out", str(png)]) == 0
    assert png.stat().st_size > 0 and "kvmtimer report:" in capsys.readouterr().out
