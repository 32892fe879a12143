"""`kvmtimer report`: guest counter minus ideal time across migrations, as a PNG.

Inputs are telemetry items (a recording, or the controller's migration records). For each
guest the ideal counter advances exactly with real time from the guest's first sample:

    error(t) = (CNTVCT(t) - CNTVCT(t0)) - (realtime(t) - realtime(t0)) * CNTFRQ / 1e9

Offset methods carry guest time exactly (error stays flat); BY_VALUE writes the saved
counter back, so guest time stalls and the error drops by the downtime at every such
migration. The picture puts the two side by side: the left panel shows each guest's error
without its offset-method jumps, the right panel without its BY_VALUE jumps. A move shows in
the samples as the guest's VM changing node; its jump is the error step between the last
sample before and the first after, and its method comes from the migration record, matched
by order and destination (node and controller clocks need not agree, so never by time).
Migrations are vertical lines in the guest's colour, annotated with method and jump.
Without samples (events or records only), each series is a step function of the
migrations' `counter_error_ticks` (the guest's own measurement).

The series computation is pure; render() imports matplotlib (Agg backend) lazily.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from kvmtimer.v1 import controller_pb2 as cpb

from node.core.features import DEFAULT_CNTFRQ_HZ
from node.core.workload import signed64

OFFSET_METHODS = frozenset({cpb.MIGRATION_METHOD_VCPU_OFFSETS, cpb.MIGRATION_METHOD_VM_COUNTER_OFFSET})
MAX_ANNOTATIONS = 40  # per panel; more only get their vertical line
NS_PER_S = 1_000_000_000

METHOD_SHORT: dict[int, str] = {
    cpb.MIGRATION_METHOD_BY_VALUE: "BV",
    cpb.MIGRATION_METHOD_VCPU_OFFSETS: "VO",
    cpb.MIGRATION_METHOD_VM_COUNTER_OFFSET: "CO",
}


BY_VALUE = "by_value"  # mark kinds
OFFSET = "offset"
UNKNOWN = "unknown"  # a move seen in the samples whose record is not in the input


def method_kind(method: int | None) -> str:
    if method is None:
        return UNKNOWN
    return OFFSET if method in OFFSET_METHODS else BY_VALUE


@dataclass(frozen=True, slots=True)
class Mark:
    """One finished migration of a guest, as drawn."""

    migration_id: str  # "" when the record is missing
    guest_id: str  # the guest that moved
    method: int | None  # MigrationMethod actually used (None: unknown)
    at_ns: int  # where it is drawn, on the series' clock
    jump_ticks: int  # error after minus error before (the guest's own figure without samples)
    cntfrq_hz: int  # the guest's counter frequency
    skew_ticks: int = 0  # destination realtime minus source realtime, in ticks (what an offset method shows)

    @property
    def kind(self) -> str:
        return method_kind(self.method)


@dataclass(slots=True)
class GuestSeries:
    """Error over time for one guest, split by method kind."""

    guest_id: str
    cntfrq_hz: int
    from_samples: bool  # False: a step function from migration records
    origin_ns: int  # time 0 of the x axis (samples and events may use different clocks)
    times_ns: list[int] = field(default_factory=list)
    by_value_ticks: list[int] = field(default_factory=list)  # error without offset-method jumps
    offset_ticks: list[int] = field(default_factory=list)  # error without BY_VALUE jumps
    marks: list[Mark] = field(default_factory=list)


@dataclass(slots=True)
class ReportData:
    guests: list[GuestSeries]
    samples: int  # samples used
    migrations: int  # migrations drawn

    @property
    def empty(self) -> bool:
        return not self.guests


class _Row(NamedTuple):
    realtime_ns: int
    cntvct: int
    running: bool
    node_id: str
    vm_id: str


@dataclass(slots=True)
class _Collected:
    samples: dict[str, list[_Row]] = field(default_factory=lambda: defaultdict(list))
    finals: dict[str, cpb.Migration] = field(default_factory=dict)  # terminal record by migration id
    paused_ns: dict[str, int] = field(default_factory=dict)  # "pause" step time by migration id
    cntfrq: dict[str, int] = field(default_factory=dict)  # by node id
    host_points: dict[str, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))
    first_sample_ns: int | None = None
    first_event_ns: int | None = None


def _collect(items: Iterable[cpb.ClusterTelemetry], guests: frozenset[str]) -> _Collected:
    c = _Collected()
    for item in items:
        kind = item.WhichOneof("item")
        if kind == "samples":
            for s in item.samples.samples:
                guest = s.guest_id or s.vm_id
                if s.realtime_ns and (c.first_sample_ns is None or s.realtime_ns < c.first_sample_ns):
                    c.first_sample_ns = s.realtime_ns
                points = c.host_points[s.node_id]
                if not points or s.realtime_ns > points[-1][0]:
                    points.append((s.realtime_ns, s.host_counter))
                if guests and guest not in guests:
                    continue
                # One vCPU is enough: a guest's vCPUs share its counter.
                if s.vcpu_index == 0:
                    c.samples[guest].append(_Row(s.realtime_ns, s.cntvct, s.running, s.node_id, s.vm_id))
        elif kind == "migration":
            ev = item.migration
            m = ev.migration
            t = ev.realtime_ns or m.created_realtime_ns
            if t and (c.first_event_ns is None or t < c.first_event_ns):
                c.first_event_ns = t
            if ev.step == "pause":
                c.paused_ns[m.migration_id] = ev.realtime_ns
            if m.phase in (cpb.MIGRATION_PHASE_SUCCEEDED, cpb.MIGRATION_PHASE_FAILED):
                c.finals[m.migration_id] = m
        elif kind == "node":
            n = item.node.node
            if n.cntfrq_hz:
                c.cntfrq[n.node_id] = n.cntfrq_hz
    return c


def _estimated_cntfrq(points: list[tuple[int, int]]) -> int | None:
    """A node's counter frequency from its host counter against realtime."""
    if len(points) < 2:
        return None
    (t0, h0), (t1, h1) = points[0], points[-1]
    if t1 - t0 < NS_PER_S // 10:
        return None
    return round((h1 - h0) * NS_PER_S / (t1 - t0))


def build_report(items: Iterable[cpb.ClusterTelemetry], guests: Iterable[str] = ()) -> ReportData:
    """Per-guest error series and migration marks from telemetry items (pure)."""
    wanted = frozenset(guests)
    c = _collect(items, wanted)

    def cntfrq(node_id: str) -> int:
        if node_id in c.cntfrq:
            return c.cntfrq[node_id]
        estimate = _estimated_cntfrq(c.host_points.get(node_id, []))
        return estimate or (next(iter(c.cntfrq.values())) if c.cntfrq else DEFAULT_CNTFRQ_HZ)

    finals_by_guest: dict[str, list[cpb.Migration]] = defaultdict(list)
    for m in c.finals.values():
        if m.phase == cpb.MIGRATION_PHASE_SUCCEEDED and (not wanted or m.guest_id in wanted):
            finals_by_guest[m.guest_id].append(m)
    out: list[GuestSeries] = []
    used_samples = 0
    for guest in sorted(set(c.samples) | set(finals_by_guest)):
        records = sorted(finals_by_guest.get(guest, []), key=lambda m: m.finished_realtime_ns)
        rows = sorted(c.samples.get(guest, []))
        if any(r.running for r in rows):
            rows = [r for r in rows if r.running]  # only while the guest runs
        if len(rows) >= 2:
            out.append(_from_samples(guest, rows, records, cntfrq(rows[0].node_id), c.first_sample_ns or 0))
            used_samples += len(rows)
        else:
            freq = cntfrq(records[0].source) if records else DEFAULT_CNTFRQ_HZ
            out.append(_from_records(guest, records, c.paused_ns, freq, c.first_event_ns or 0))
    return ReportData(out, used_samples, sum(len(g.marks) for g in out))


def _pair(moves: list[int], rows: list[_Row], records: list[cpb.Migration]) -> list[cpb.Migration | None]:
    """The record of each move seen in the samples. Node and controller clocks need not agree,
    so moves are matched by order (and destination), never by time."""
    if len(moves) == len(records):
        return list(records)
    out: list[cpb.Migration | None] = []
    j = 0
    for i in moves:
        found = next((k for k in range(j, len(records)) if records[k].destination == rows[i].node_id), None)
        if found is None:
            out.append(None)
        else:
            out.append(records[found])
            j = found + 1
    return out


def _from_samples(
    guest: str, rows: list[_Row], records: list[cpb.Migration], freq: int, origin_ns: int
) -> GuestSeries:
    t0, v0 = rows[0].realtime_ns, rows[0].cntvct
    # Wrapping u64 arithmetic: a counter step is the signed 64-bit difference.
    errors = [signed64(r.cntvct - v0) - (r.realtime_ns - t0) * freq // NS_PER_S for r in rows]
    # A move shows in the samples as the guest's VM (and node) changing.
    moves = [
        i
        for i in range(1, len(rows))
        if (rows[i].node_id, rows[i].vm_id) != (rows[i - 1].node_id, rows[i - 1].vm_id)
    ]
    series = GuestSeries(guest, freq, True, origin_ns)
    for i, rec in zip(moves, _pair(moves, rows, records), strict=True):
        series.marks.append(
            Mark(
                rec.migration_id if rec is not None else "",
                guest,
                rec.method if rec is not None else None,
                (rows[i - 1].realtime_ns + rows[i].realtime_ns) // 2,
                errors[i] - errors[i - 1],
                freq,
                rec.realtime_skew_ns * freq // NS_PER_S if rec is not None else 0,
            )
        )
    jumps = dict(zip(moves, series.marks, strict=True))
    bv = off = 0
    for i, (row, err) in enumerate(zip(rows, errors, strict=True)):
        mark = jumps.get(i)
        if mark is not None:
            if mark.kind == BY_VALUE:
                bv += mark.jump_ticks
            elif mark.kind == OFFSET:
                off += mark.jump_ticks
        series.times_ns.append(row.realtime_ns)
        # Each panel shows the error without the other kind's jumps (unknown ones stay in both).
        series.by_value_ticks.append(err - off)
        series.offset_ticks.append(err - bv)
    return series


def _from_records(
    guest: str, records: list[cpb.Migration], paused_ns: dict[str, int], freq: int, origin_ns: int
) -> GuestSeries:
    series = GuestSeries(guest, freq, False, origin_ns)
    bv = off = 0
    series.times_ns.append(origin_ns)
    series.by_value_ticks.append(0)
    series.offset_ticks.append(0)
    for m in records:
        jump = m.counter_error_ticks if m.HasField("counter_error_ticks") else 0
        at = paused_ns.get(m.migration_id) or m.finished_realtime_ns
        mark = Mark(m.migration_id, guest, m.method, at, jump, freq, m.realtime_skew_ns * freq // NS_PER_S)
        series.marks.append(mark)
        if mark.kind == BY_VALUE:
            bv += jump
        else:
            off += jump
        series.times_ns.append(m.finished_realtime_ns)
        series.by_value_ticks.append(bv)
        series.offset_ticks.append(off)
    return series


UNITS = {"us": ("µs", 1e6), "ms": ("ms", 1e3), "ticks": ("ticks", 0.0)}
# Flat lines stay flat: the y axis spans at least this much around zero (±5 µs).
MIN_HALF_SPAN_S = 5e-6


def scale(ticks: int, freq: int, unit: str) -> float:
    """Ticks at `freq` in `unit` (us, ms or ticks)."""
    per_s = UNITS[unit][1]
    return ticks * per_s / freq if per_s else float(ticks)


def auto_unit(data: ReportData) -> str:
    """ms when some error reaches 10 ms, else µs."""
    worst_us = max(
        (abs(scale(v, g.cntfrq_hz, "us")) for g in data.guests for v in (*g.by_value_ticks, *g.offset_ticks)),
        default=0.0,
    )
    return "ms" if worst_us >= 10_000 else "us"


def _migrations(n: int) -> str:
    return f"{n} migration{'' if n == 1 else 's'}"


def jump_label(mark: Mark, unit: str) -> str:
    if unit == "ticks":
        text = f"{mark.jump_ticks:+d}"
    else:
        us = scale(mark.jump_ticks, mark.cntfrq_hz, "us")
        text = f"{us / 1000:+.1f} ms" if abs(us) >= 1000 else f"{us:+.0f} µs"
    method = METHOD_SHORT.get(mark.method, "?") if mark.method is not None else "?"
    if mark.skew_ticks and mark.method in OFFSET_METHODS:
        # Case 39 at a glance: an offset method's error is the skew between the two nodes.
        skew = (
            f"{mark.skew_ticks:+d}"
            if unit == "ticks"
            else f"{scale(mark.skew_ticks, mark.cntfrq_hz, 'us'):+.0f} µs"
        )
        return f"{method} {text} (skew {skew})"
    return f"{method} {text}"


def render(
    data: ReportData,
    out: Path,
    *,
    width_px: int = 1400,
    height_px: int = 700,
    unit: str = "auto",
    title: str = "",
    dpi: int = 100,
) -> None:
    """Draw `data` into a PNG of exactly width_px x height_px; `unit`: auto, us, ms or ticks."""
    if unit == "auto":
        unit = auto_unit(data)
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(width_px / dpi, height_px / dpi), dpi=dpi, sharex=True)
    try:
        ax_bv, ax_off = axes
        colours = [f"C{i}" for i in range(10)]  # the default colour cycle
        unit_label = UNITS[unit][0]
        for panel, kind in ((ax_bv, BY_VALUE), (ax_off, OFFSET)):
            annotated = 0
            for i, g in enumerate(data.guests):
                colour = colours[i % len(colours)]
                values = g.by_value_ticks if kind == BY_VALUE else g.offset_ticks
                panel.plot(
                    [(t - g.origin_ns) / NS_PER_S for t in g.times_ns],
                    [scale(v, g.cntfrq_hz, unit) for v in values],
                    color=colour,
                    linewidth=1.2,
                    drawstyle="default" if g.from_samples else "steps-post",
                    marker=None if g.from_samples else ".",
                    label=g.guest_id,
                )
                for mark in g.marks:
                    if mark.kind not in (kind, UNKNOWN):
                        continue
                    x = (mark.at_ns - g.origin_ns) / NS_PER_S
                    style = ":" if mark.kind == kind else "-."
                    panel.axvline(x, color=colour, linestyle=style, linewidth=0.9, alpha=0.8)
                    if annotated < MAX_ANNOTATIONS:
                        annotated += 1
                        panel.annotate(
                            jump_label(mark, unit),
                            xy=(x, 1.0),
                            xycoords=("data", "axes fraction"),
                            xytext=(2, -4 - 9 * (annotated % 4)),
                            textcoords="offset points",
                            fontsize=6,
                            color=colour,
                            va="top",
                        )
            count = sum(1 for g in data.guests for m in g.marks if m.kind == kind)
            panel.set_title(
                f"BY_VALUE: saved counter written back ({_migrations(count)})"
                if kind == BY_VALUE
                else f"Offset methods: VCPU_OFFSETS / VM_COUNTER_OFFSET ({_migrations(count)})",
                fontsize=10,
            )
            panel.axhline(0.0, color="0.6", linewidth=0.6)
            freq = data.guests[0].cntfrq_hz if data.guests else DEFAULT_CNTFRQ_HZ
            half = scale(max(1, round(MIN_HALF_SPAN_S * freq)), freq, unit)
            low, high = panel.get_ylim()
            panel.set_ylim(min(low, -half), max(high, half))
            panel.set_xlabel("time since the recording started (s)")
            panel.set_ylabel(f"guest CNTVCT − ideal time ({unit_label})")
            panel.grid(True, linewidth=0.3, alpha=0.5)
        if data.guests:
            ax_off.legend(loc="lower left", fontsize=7, ncol=2, title="guest", title_fontsize=7)
        fig.suptitle(
            title
            or (
                f"Guest counter minus ideal time across {_migrations(data.migrations)} "
                f"({'from samples' if data.samples else 'from migration records'})"
            ),
            fontsize=11,
        )
        fig.savefig(out, format="png", dpi=dpi)
    finally:
        plt.close(fig)
