"""Text and JSON renderings of controller messages, shared by the client commands and `kvmtimer up`.

Pure functions over protobuf messages: no I/O, no gRPC calls.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Collection, Iterable, Sequence
from typing import cast

from google.protobuf import json_format
from google.protobuf.message import Message
from kvmtimer.v1 import controller_pb2 as cpb
from kvmtimer.v1 import node_pb2 as pb


def to_dict(message: Message) -> dict[str, object]:
    """Canonical proto3 JSON mapping (int64 as strings), field names as in the .proto, defaults included."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def to_json(message: Message, *, indent: int | None = 2) -> str:
    return json.dumps(to_dict(message), indent=indent)


def method_name(value: int) -> str:
    """MIGRATION_METHOD_VM_COUNTER_OFFSET -> VM_COUNTER_OFFSET."""
    return cpb.MigrationMethod.Name(value).removeprefix("MIGRATION_METHOD_")


def phase_name(value: int) -> str:
    return cpb.MigrationPhase.Name(value).removeprefix("MIGRATION_PHASE_")


def profile_name(value: int) -> str:
    return pb.ApiProfile.Name(value).removeprefix("API_PROFILE_")


def clock_name(value: int) -> str:
    return pb.ClockMode.Name(value).removeprefix("CLOCK_MODE_").lower()


def method_value(name: str) -> cpb.MigrationMethod:
    """AUTO / by_value / MIGRATION_METHOD_VCPU_OFFSETS -> enum value (ValueError if unknown)."""
    full = name.upper()
    if not full.startswith("MIGRATION_METHOD_"):
        full = "MIGRATION_METHOD_" + full
    return cast(cpb.MigrationMethod, cpb.MigrationMethod.Value(full))


METHOD_NAMES = tuple(method_name(v) for v in cpb.MigrationMethod.values())


def features_label(node: cpb.NodeStatus) -> str:
    """`ecv2 VHE cntpoff`, `ecv0 nVHE`."""
    parts = [f"ecv{node.ecv}", "VHE" if node.vhe else "nVHE"]
    if node.has_cntpoff:
        parts.append("cntpoff")
    return " ".join(parts)


def frequency_label(hz: int) -> str:
    if hz % 1_000_000 == 0:
        return f"{hz // 1_000_000} MHz"
    if hz % 1_000 == 0:
        return f"{hz // 1_000} kHz"
    return f"{hz} Hz"


def ms(us: int) -> str:
    """Microseconds as milliseconds with three decimals."""
    return f"{us / 1000:.3f}"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, numbers_right: bool = False) -> str:
    """Columns separated by two spaces, left-aligned (with `numbers_right`, every column but the
    first right-aligned, as benchmark tables are); `-` for empty cells. The one text-table
    renderer of the project."""
    cells = [[str(c) if c not in (None, "") else "-" for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if numbers_right and i else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), *(line(row) for row in cells)])


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (q in 0..1) of a sample by `statistics.quantiles` (inclusive method: the
    minimum at 0, the maximum at 1, linear in between); None for an empty sample."""
    if not values:
        return None
    if len(values) == 1 or q >= 1:
        return float(max(values))
    if q <= 0:
        return float(min(values))
    cuts = statistics.quantiles(values, n=1000, method="inclusive")  # cut k is the k/1000 quantile
    return cuts[min(len(cuts), max(1, round(q * 1000))) - 1]


def nodes_table(nodes: Iterable[cpb.NodeStatus]) -> str:
    return table(
        (
            "NODE",
            "ADDRESS",
            "HEALTH",
            "CNTFRQ",
            "FEATURES",
            "PROFILE",
            "CLOCK",
            "GUESTS",
            "VCPUS",
            "ORPHAN VMS",
            "LAST ERROR",
        ),
        (
            (
                n.node_id,
                n.address,
                "up" if n.healthy else "DOWN",
                frequency_label(n.cntfrq_hz),
                features_label(n),
                profile_name(n.api_profile),
                clock_name(n.clock_mode),
                n.guest_count,
                n.vcpu_count,
                ", ".join(o.vm_id for o in n.orphans),
                n.last_error,
            )
            for n in nodes
        ),
    )


def min_step(obs: pb.GuestObservations) -> int | None:
    """Smallest step between consecutive counter readings over every vCPU and both counters."""
    steps = [
        value
        for o in obs.vcpus
        for field in ("min_step_v", "min_step_p")
        if o.HasField(field)
        for value in (int(getattr(o, field)),)
    ]
    return min(steps) if steps else None


def interrupts(obs: pb.GuestObservations) -> tuple[int, int, int]:
    """(received, expected, worst shortfall of any one vCPU timer) over every vCPU and timer."""
    received = sum(o.vtimer_received + o.ptimer_received for o in obs.vcpus)
    expected = sum(o.vtimer_expected + o.ptimer_expected for o in obs.vcpus)
    shortfall = max(
        (
            max(o.vtimer_expected - o.vtimer_received, o.ptimer_expected - o.ptimer_received, 0)
            for o in obs.vcpus
        ),
        default=0,
    )
    return received, expected, shortfall


def guest_state_label(g: cpb.Guest, down: Collection[str] = ()) -> str:
    """running, creating, or LOST (reason); a guest whose node is in `down` (does not answer) is
    shown as waiting: the controller decides nothing about it until the node answers again."""
    if g.state == cpb.GUEST_STATE_LOST:
        return f"LOST ({g.state_reason})" if g.state_reason else "LOST"
    label = "creating" if g.state == cpb.GUEST_STATE_CREATING else "running"
    if g.node_id in down:
        return f"{label}? (node {g.node_id} DOWN: waiting)"
    return label


def guests_table(
    guests: Iterable[cpb.Guest], *, observations: bool = False, down: Collection[str] = ()
) -> str:
    """`down`: ids of the nodes the controller sees down (their guests are shown waiting)."""
    headers = ["GUEST", "STATE", "NODE", "VM", "VCPUS", "PERIOD", "PTIMER", "MIGRATING", "MIGRATIONS"]
    if observations:
        headers += ["MIN STEP", "IRQS RECV/EXP", "LAST JUMP ERR"]
    rows: list[list[object]] = []
    for g in guests:
        row: list[object] = [
            g.guest_id,
            guest_state_label(g, down),
            g.node_id,
            g.vm_id,
            g.vcpus,
            g.workload.period_ticks,
            "yes" if g.workload.use_ptimer else "no",
            g.migrating,
            g.migrations,
        ]
        if observations:
            if g.HasField("observations"):
                received, expected, _ = interrupts(g.observations)
                errors = [
                    o.last_jump_error_ticks
                    for o in g.observations.vcpus
                    if o.HasField("last_jump_error_ticks")
                ]
                row += [
                    min_step(g.observations),
                    f"{received}/{expected}",
                    max(errors, key=abs) if errors else None,
                ]
            else:
                row += ["?", "?", "?"]
        rows.append(row)
    return table(headers, rows)


def counter_error(m: cpb.Migration) -> str:
    return str(m.counter_error_ticks) if m.HasField("counter_error_ticks") else "-"


def state_lost(m: cpb.Migration) -> str:
    """The guest's physical-timer state a move could not carry ("" when none or unused)."""
    lost = [n for n in m.not_carried if n.startswith("PTIMER_")]
    return ", ".join(lost) if m.guest_uses_ptimer and lost else ""


def migrations_table(migrations: Iterable[cpb.Migration]) -> str:
    return table(
        (
            "MIGRATION",
            "GUEST",
            "SOURCE->DEST",
            "METHOD",
            "APPLIED AS",
            "PHASE",
            "DOWNTIME MS",
            "TOTAL MS",
            "ERR TICKS",
            "REASON",
        ),
        (
            (
                m.migration_id,
                m.guest_id,
                f"{m.source}->{m.destination or '?'}",
                method_name(m.method)
                + ("" if m.requested_method == m.method else f" ({method_name(m.requested_method)})"),
                m.applied_as,
                phase_name(m.phase),
                ms(m.downtime),
                ms(m.total_time),
                counter_error(m),
                m.reason,
            )
            for m in migrations
        ),
    )


def migration_detail(m: cpb.Migration) -> str:
    """One migration record as `key: value` lines."""
    fields: list[tuple[str, object]] = [
        ("migration", m.migration_id),
        ("guest", m.guest_id),
        ("source", m.source),
        ("destination", m.destination or "-"),
        ("requested method", method_name(m.requested_method)),
        ("method", method_name(m.method)),
        ("applied as", m.applied_as or "-"),
        ("phase", phase_name(m.phase)),
        ("setup time", f"{ms(m.setup_time)} ms"),
        ("downtime", f"{ms(m.downtime)} ms"),
        ("total time", f"{ms(m.total_time)} ms"),
        ("counter error", f"{counter_error(m)} ticks"),
        ("elapsed credited", f"{m.elapsed_ticks} ticks"),
        ("traps before/after", f"{m.traps_before}/{m.traps_after}"),
        ("destination uses CNTPOFF", "yes" if m.destination_uses_cntpoff else "no"),
    ]
    if m.not_carried:
        fields.append(("not carried", ", ".join(m.not_carried)))
    if m.cancelled:
        fields.append(("cancelled", "yes"))
    if m.reason:
        fields.append(("reason", m.reason))
    width = max(len(k) for k, _ in fields)
    return "\n".join(f"{k + ':':<{width + 1}} {v}" for k, v in fields)
