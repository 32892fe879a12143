"""The end of `kvmtimer up`: outcomes per method, downtime percentiles, counter errors, what guests saw."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from kvmtimer.v1 import controller_pb2 as cpb

from controller.cli import views
from controller.cli.up.scenario import Demo
from controller.cli.views import percentile


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def build_summary(
    demo: Demo,
    migrations: Sequence[cpb.Migration],
    guests: Sequence[cpb.Guest],
    processes: Mapping[str, tuple[int | None, int | None]],
) -> dict[str, object]:
    """Everything the run showed, as plain JSON-able values."""
    by_method: dict[str, Counter[str]] = {}
    downtimes: dict[str, list[float]] = {}
    errors: dict[str, list[int]] = {}
    for m in migrations:
        if m.phase not in (cpb.MIGRATION_PHASE_SUCCEEDED, cpb.MIGRATION_PHASE_FAILED):
            continue
        name = views.method_name(m.method)
        ok = m.phase == cpb.MIGRATION_PHASE_SUCCEEDED
        by_method.setdefault(name, Counter())["succeeded" if ok else "failed"] += 1
        if ok:
            downtimes.setdefault(name, []).append(m.downtime / 1000)
            if m.HasField("counter_error_ticks"):
                errors.setdefault(name, []).append(m.counter_error_ticks)
    all_downtimes = [d for values in downtimes.values() for d in values]
    offset_errors = [abs(e) for name, values in errors.items() if name != "BY_VALUE" for e in values]
    by_value_errors = [abs(e) for e in errors.get("BY_VALUE", [])]
    methods = {
        name: {
            "succeeded": counts["succeeded"],
            "failed": counts["failed"],
            "downtime_ms_p50": _round(percentile(downtimes.get(name, []), 0.5)),
            "downtime_ms_p99": _round(percentile(downtimes.get(name, []), 0.99)),
            "max_abs_counter_error_ticks": max((abs(e) for e in errors.get(name, [])), default=None),
        }
        for name, counts in sorted(by_method.items())
    }
    guest_rows: list[dict[str, object]] = []
    for g in guests:
        row: dict[str, object] = {
            "guest_id": g.guest_id,
            "node_id": g.node_id,
            "vcpus": g.vcpus,
            "use_ptimer": g.workload.use_ptimer,
            "migrations": g.migrations,
        }
        if g.HasField("observations"):
            received, expected, shortfall = views.interrupts(g.observations)
            row |= {
                "min_step": views.min_step(g.observations),
                "interrupts_received": received,
                "interrupts_expected": expected,
                "max_timer_shortfall": shortfall,
                "max_lateness_ticks": max((o.max_lateness_ticks for o in g.observations.vcpus), default=0),
            }
        guest_rows.append(row)
    succeeded = sum(c["succeeded"] for c in by_method.values())
    failed = sum(c["failed"] for c in by_method.values())
    steps = [r.get("min_step") for r in guest_rows]
    return {
        "duration_s": round(demo.elapsed(), 3),
        "controller": demo.address,
        "nodes": [
            {
                "node_id": n.node_id,
                "ecv": n.ecv,
                "vhe": n.vhe,
                "api_profile": views.profile_name(n.api_profile),
                "cntfrq_hz": n.cntfrq_hz,
                "healthy": n.healthy,
                "pid": processes.get(n.node_id, (None, None))[0],
                "exit_code": processes.get(n.node_id, (None, None))[1],
            }
            for n in demo.nodes
        ],
        "migrations": {"succeeded": succeeded, "failed": failed, "refused": len(demo.refusals)},
        "moved_with_state_loss": [
            {"migration_id": m.migration_id, "guest_id": m.guest_id, "not_carried": list(m.not_carried)}
            for m in migrations
            if m.phase == cpb.MIGRATION_PHASE_SUCCEEDED and views.state_lost(m)
        ],
        "by_method": methods,
        "refused_by_method": {"AUTO": len(demo.refusals)} if demo.refusals else {},
        "refused_by_code": dict(Counter(r.code for r in demo.refusals)),
        "downtime_ms": {
            "p50": _round(percentile(all_downtimes, 0.5)),
            "p99": _round(percentile(all_downtimes, 0.99)),
            "max": _round(max(all_downtimes, default=None)),
        },
        "max_abs_counter_error_ticks": {
            "offset_methods": max(offset_errors, default=None),
            "by_value": max(by_value_errors, default=None),
        },
        "guests": guest_rows,
        "all_min_steps_non_negative": all(isinstance(s, int) and s >= 0 for s in steps),
        "node_processes_stopped": all(code is not None for _, code in processes.values()),
    }


def summary_text(summary: dict[str, object]) -> str:
    def get(key: str) -> dict[str, object]:
        value = summary[key]
        assert isinstance(value, dict)
        return value

    def show(value: object, unit: str = "") -> str:
        return "-" if value is None else f"{value}{unit}"

    counts, downtime, errors = get("migrations"), get("downtime_ms"), get("max_abs_counter_error_ticks")
    lines = [
        f"Summary after {summary['duration_s']} s of migrations: {counts['succeeded']} succeeded, "
        f"{counts['failed']} failed, {counts['refused']} refused",
        f"downtime p50 {show(downtime['p50'], ' ms')}, p99 {show(downtime['p99'], ' ms')}, "
        f"max {show(downtime['max'], ' ms')}",
        f"max |counter error|: offset methods {show(errors['offset_methods'], ' ticks')}, "
        f"BY_VALUE {show(errors['by_value'], ' ticks')} (by value, guest time stalls for the downtime)",
        "",
    ]
    methods = get("by_method")
    refused = get("refused_by_method")
    rows: list[list[object]] = []
    for name, raw in methods.items():
        assert isinstance(raw, dict)
        rows.append(
            [
                name,
                raw["succeeded"],
                raw["failed"],
                "-",
                raw["downtime_ms_p50"],
                raw["downtime_ms_p99"],
                raw["max_abs_counter_error_ticks"],
            ]
        )
    for name, count in refused.items():
        rows.append([name, "-", "-", count, None, None, None])
    lines.append(
        views.table(
            ("METHOD", "SUCCEEDED", "FAILED", "REFUSED", "DOWNTIME P50 MS", "P99 MS", "MAX |ERR| TICKS"), rows
        )
    )
    lossy = summary.get("moved_with_state_loss")
    if isinstance(lossy, list) and lossy:
        lines.append(
            f"{len(lossy)} move(s) lost a guest's physical timer (a pre-6.4 kernel cannot carry it): "
            + ", ".join(f"{x['guest_id']} ({x['migration_id']})" for x in lossy)
        )
    by_code = get("refused_by_code")
    if by_code:
        lines.append("refusals: " + ", ".join(f"{code} x{n}" for code, n in by_code.items()))
    lines.append("")
    guests = summary["guests"]
    assert isinstance(guests, list)
    lines.append(
        views.table(
            (
                "GUEST",
                "NODE",
                "VCPUS",
                "PTIMER",
                "MIGRATIONS",
                "MIN STEP",
                "IRQS RECEIVED/EXPECTED",
                "MAX LATE TICKS",
            ),
            (
                (
                    g["guest_id"],
                    g["node_id"],
                    g["vcpus"],
                    "yes" if g["use_ptimer"] else "no",
                    g["migrations"],
                    g.get("min_step", "?"),
                    f"{g.get('interrupts_received', '?')}/{g.get('interrupts_expected', '?')}",
                    g.get("max_lateness_ticks", "?"),
                )
                for g in guests
            ),
        )
    )
    verdict = (
        "every guest counter monotonic" if summary["all_min_steps_non_negative"] else "COUNTER WENT BACKWARDS"
    )
    stopped = (
        "node processes stopped" if summary["node_processes_stopped"] else "SOME NODE PROCESSES DID NOT STOP"
    )
    lines += ["", f"{verdict}; {stopped}"]
    return "\n".join(lines)
