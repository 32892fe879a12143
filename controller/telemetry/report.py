"""`kvmtimer report`: guest counter minus ideal time across migrations, as a PNG.

Inputs are telemetry items (a recording, or the controller's migration records). For each
guest the ideal counter advances exactly with real time from the guest's first sample:

    error(t) = (CNTVCT(t) - CNTVCT(t0)) - (realtime(t) - realtime(t0)) * CNTFRQ / 1e9

Offset methods carry guest time exactly (error stays flat); BY_VALUE writes the saved
counter back, so guest time stalls and the error drops by the downtime at every such
migration. The picture puts the two side by side: the left panel shows each guest's error
with only its BY_VALUE jumps, the right panel with only its offset-method jumps (each jump
is measured from the samples around the migration). Migrations are vertical lines in the
guest's colour, annotated with the jump. Without samples (events or records only), the
series is built from each migration's `counter_error_ticks` (the guest's own measurement).

The series computation is pure; render() imports matplotlib (Agg backend) lazily.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from kvmtimer.v1 import controller_pb2 as cpb

DEFAULT_CNTFRQ_HZ = 25_000_000
OFFSET_METHODS = frozenset({cpb.MIGRATION_METHOD_VCPU_OFFSETS, cpb.MIGRATION_METHOD_VM_COUNTER_OFFSET})
MAX_ANNOTATIONS = 40  # per panel; more only get their vertical line
NS_PER_S = 1_000_000_000

METHOD_SHORT: dict[int, str] = {
    cpb.MIGRATION_METHOD_BY_VALUE: "BV",
    cpb.MIGRATION_METHOD_VCPU_OFFSETS: "VO",
    cpb.MIGRATION_METHOD_VM_COUNTER_OFFSET: "CO",
}


@dataclass(frozen=True, slots=True)
class Mark:
    """One finished migration of a guest, as drawn."""

    migration_id: str
    guest_id: str
    method: int  # MigrationMethod actually used
    start_ns: int  # when the source paused (or the record's creation time)
    end_ns: int  # when the migration finished
    jump_ticks: int  # error after minus error before (the guest's own figure if no samples)
    cntfrq_hz: int

    @property
    def by_value(self) -> bool:
        return self.method not in OFFSET_METHODS


@dataclass(slots=True)
class GuestSeries:
    """Error over time for one guest, split by method class."""

    guest_id: str
    cntfrq_hz: int
    from_samples: bool  # False: a step function from migration records
    times_ns: list[int] = field(default_factory=list)
    by_value_ticks: list[int] = field(default_factory=list)  # error with only BY_VALUE jumps
    offset_ticks: list[int] = field(default_factory=list)  # error with only offset-method jumps
    marks: list[Mark] = field(default_factory=list)


@dataclass(slots=True)
class ReportData:
    guests: list[GuestSeries]
    start_ns: int  # time origin of the plot
    samples: int  # samples used
    migrations: int  # finished migrations drawn

    @property
    def empty(self) -> bool:
        return not self.guests


@dataclass(slots=True)
class _Collected:
    samples: dict[str, list[tuple[int, int, bool, str]]] = field(default_factory=lambda: defaultdict(list))
    finals: dict[str, cpb.Migration] = field(default_factory=dict)  # terminal record by migration id
    paused_ns: dict[str, int] = field(default_factory=dict)  # "pause" step time by migration id
    cntfrq: dict[str, int] = field(default_factory=dict)  # by node id
    host_points: dict[str, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))
    first_ns: int | None = None


def _collect(items: Iterable[cpb.ClusterTelemetry], guests: frozenset[str]) -> _Collected:
    c = _Collected()

    def seen(ns: int) -> None:
        if ns and (c.first_ns is None or ns < c.first_ns):
            c.first_ns = ns

    for item in items:
        kind = item.WhichOneof("item")
        if kind == "samples":
            for s in item.samples.samples:
                guest = s.guest_id or s.vm_id
                seen(s.realtime_ns)
                if len(c.host_points[s.node_id]) < 2 or s.realtime_ns > c.host_points[s.node_id][-1][0]:
                    c.host_points[s.node_id].append((s.realtime_ns, s.host_counter))
                if guests and guest not in guests:
                    continue
                # One vCPU is enough: a guest's vCPUs share its counter.
                if s.vcpu_index == 0:
                    c.samples[guest].append((s.realtime_ns, s.cntvct, s.running, s.node_id))
        elif kind == "migration":
            ev = item.migration
            m = ev.migration
            seen(ev.realtime_ns or m.created_realtime_ns)
            if ev.step == "pause":
                c.paused_ns[m.migration_id] = ev.realtime_ns
            if m.phase in (cpb.MIGRATION_PHASE_SUCCEEDED, cpb.MIGRATION_PHASE_FAILED):
                c.finals[m.migration_id] = m
        elif kind == "node":
            n = item.node.node
            if n.cntfrq_hz:
                c.cntfrq[n.node_id] = n.cntfrq_hz
            seen(item.node.realtime_ns)
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
    names = sorted(set(c.samples) | set(finals_by_guest))
    out: list[GuestSeries] = []
    used_samples = 0
    for guest in names:
        records = sorted(finals_by_guest.get(guest, []), key=lambda m: m.finished_realtime_ns)
        rows = sorted(c.samples.get(guest, []))
        if any(r[2] for r in rows):
            rows = [r for r in rows if r[2]]  # only while the guest runs
        if len(rows) >= 2:
            series = _from_samples(guest, rows, records, c.paused_ns, cntfrq)
            used_samples += len(rows)
        else:
            freq = cntfrq(records[0].source) if records else DEFAULT_CNTFRQ_HZ
            series = _from_records(guest, records, c.paused_ns, freq, c.first_ns or 0)
        out.append(series)
    return ReportData(out, c.first_ns or 0, used_samples, sum(len(g.marks) for g in out))


def _mark(m: cpb.Migration, paused_ns: dict[str, int], jump: int, freq: int) -> Mark:
    start = paused_ns.get(m.migration_id) or m.created_realtime_ns or m.finished_realtime_ns
    return Mark(m.migration_id, m.guest_id, m.method, start, m.finished_realtime_ns, jump, freq)


def _from_samples(
    guest: str,
    rows: list[tuple[int, int, bool, str]],
    records: list[cpb.Migration],
    paused_ns: dict[str, int],
    cntfrq: Callable[[str], int],
) -> GuestSeries:
    freq = cntfrq(rows[0][3])
    t0, v0 = rows[0][0], rows[0][1]
    times = [r[0] for r in rows]
    # Wrapping u64 arithmetic: a counter step is the signed 64-bit difference.
    errors = [_signed64(r[1] - v0) - (r[0] - t0) * freq // NS_PER_S for r in rows]
    marks: list[Mark] = []
    for m in records:
        start = paused_ns.get(m.migration_id) or m.created_realtime_ns
        before = bisect.bisect_right(times, start) - 1
        after = bisect.bisect_left(times, m.finished_realtime_ns)
        if before >= 0 and after < len(times):
            jump = errors[after] - errors[before]
        else:
            jump = m.counter_error_ticks if m.HasField("counter_error_ticks") else 0
        marks.append(_mark(m, paused_ns, jump, freq))
    series = GuestSeries(guest, freq, True, marks=marks)
    for t, err in zip(times, errors, strict=True):
        inside = [mk for mk in marks if mk.start_ns < t < mk.end_ns]
        done = [mk for mk in marks if mk.end_ns <= t]
        bv_jumps = sum(mk.jump_ticks for mk in done if mk.by_value)
        off_jumps = sum(mk.jump_ticks for mk in done if not mk.by_value)
        # A sample taken while a migration of one kind was in progress is left out of the
        # other kind's panel (it may or may not include that jump yet).
        series.times_ns.append(t)
        series.by_value_ticks.append(err - off_jumps if not any(not mk.by_value for mk in inside) else _GAP)
        series.offset_ticks.append(err - bv_jumps if not any(mk.by_value for mk in inside) else _GAP)
    return series


_GAP = -(2**63)  # a point not drawn in that panel


def _from_records(
    guest: str, records: list[cpb.Migration], paused_ns: dict[str, int], freq: int, first_ns: int
) -> GuestSeries:
    series = GuestSeries(guest, freq, False)
    bv = off = 0
    start = min([first_ns] + [m.created_realtime_ns for m in records if m.created_realtime_ns] or [first_ns])
    series.times_ns.append(start)
    series.by_value_ticks.append(0)
    series.offset_ticks.append(0)
    for m in records:
        jump = m.counter_error_ticks if m.HasField("counter_error_ticks") else 0
        mark = _mark(m, paused_ns, jump, freq)
        series.marks.append(mark)
        if mark.by_value:
            bv += jump
        else:
            off += jump
        series.times_ns.append(m.finished_realtime_ns)
        series.by_value_ticks.append(bv)
        series.offset_ticks.append(off)
    return series


def _signed64(value: int) -> int:
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


UNITS = {"us": ("µs", 1e6), "ms": ("ms", 1e3), "ticks": ("ticks", 0.0)}
# Flat lines stay flat: the y axis spans at least this much around zero (±5 µs).
MIN_HALF_SPAN_S = 5e-6


def scale(ticks: int, freq: int, unit: str) -> float:
    """Ticks at `freq` in `unit` (us, ms or ticks)."""
    per_s = UNITS[unit][1]
    return ticks * per_s / freq if per_s else float(ticks)


def jump_label(mark: Mark, unit: str) -> str:
    if unit == "ticks":
        text = f"{mark.jump_ticks:+d}"
    else:
        us = scale(mark.jump_ticks, mark.cntfrq_hz, "us")
        text = f"{us / 1000:+.1f} ms" if abs(us) >= 1000 else f"{us:+.0f} µs"
    return f"{METHOD_SHORT.get(mark.method, '?')} {text}"


def render(
    data: ReportData,
    out: Path,
    *,
    width_px: int = 1400,
    height_px: int = 700,
    unit: str = "us",
    title: str = "",
    dpi: int = 100,
) -> None:
    """Draw `data` into a PNG of exactly width_px x height_px."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(width_px / dpi, height_px / dpi), dpi=dpi, sharex=True)
    try:
        ax_bv, ax_off = axes
        colours = [f"C{i}" for i in range(10)]  # the default colour cycle
        unit_label = UNITS[unit][0]
        for panel, by_value in ((ax_bv, True), (ax_off, False)):
            annotated = 0
            for i, g in enumerate(data.guests):
                colour = colours[i % len(colours)]
                values = g.by_value_ticks if by_value else g.offset_ticks
                xs = [
                    (t - data.start_ns) / NS_PER_S
                    for t, v in zip(g.times_ns, values, strict=True)
                    if v != _GAP
                ]
                ys = [scale(v, g.cntfrq_hz, unit) for v in values if v != _GAP]
                panel.plot(
                    xs,
                    ys,
                    color=colour,
                    linewidth=1.2,
                    drawstyle="default" if g.from_samples else "steps-post",
                    marker=None if g.from_samples else ".",
                    label=g.guest_id,
                )
                for mark in g.marks:
                    if mark.by_value != by_value:
                        continue
                    x = (mark.start_ns - data.start_ns) / NS_PER_S
                    panel.axvline(x, color=colour, linestyle=":", linewidth=0.9, alpha=0.8)
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
            count = sum(1 for g in data.guests for m in g.marks if m.by_value == by_value)
            panel.set_title(
                f"BY_VALUE: saved counter written back ({count} migrations)"
                if by_value
                else f"Offset methods: VCPU_OFFSETS / VM_COUNTER_OFFSET ({count} migrations)",
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
                f"Guest counter minus ideal time across {data.migrations} migrations "
                f"({'from samples' if data.samples else 'from migration records'})"
            ),
            fontsize=11,
        )
        fig.savefig(out, format="png", dpi=dpi)
    finally:
        plt.close(fig)
