"""`kvmtimer watch` (the controller's live telemetry stream) and `kvmtimer report` (a PNG of
guest counter minus ideal time across migrations, from a recording or the controller)."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TextIO

import grpc
from kvmtimer.v1 import controller_pb2 as cpb
from kvmtimer.v1 import controller_pb2_grpc as cpb_grpc
from kvmtimer.v1 import node_pb2 as pb

from controller.cli import client, views
from controller.telemetry import record, skew
from node.core.workload import signed64
from node.runtime import settings
from node.runtime.options import int_between, non_negative_int, positive_float

REDRAW_S = 0.5
RECENT_EVENTS = 12
NS_PER_S = 1_000_000_000

# --- watch: pure rendering ------------------------------------------------------------------


def clock(realtime_ns: int) -> str:
    """HH:MM:SS.mmm local time (`-` when unknown)."""
    if not realtime_ns:
        return "--:--:--.---"
    seconds = realtime_ns / NS_PER_S
    return time.strftime("%H:%M:%S", time.localtime(seconds)) + f".{int(seconds * 1000) % 1000:03d}"


def sample_line(s: pb.TelemetrySample) -> str:
    phys = "cntpoff" if s.uses_cntpoff else ("trap" if s.traps_cntpct else "direct")
    return (
        f"{clock(s.realtime_ns)} sample {s.node_id} {s.guest_id or s.vm_id} vcpu{s.vcpu_index} "
        f"cntvct={s.cntvct} cntpct={s.cntpct} voffset={s.voffset} poffset={s.poffset} phys={phys} "
        f"traps={s.trap_count} vtimer=ctl{s.vtimer_ctl}/irq{int(s.vtimer_level)} "
        f"ptimer=ctl{s.ptimer_ctl}/irq{int(s.ptimer_level)}" + ("" if s.running else " paused")
    )


def event_line(ev: cpb.MigrationEvent) -> str:
    m = ev.migration
    what = f"step={ev.step}" if ev.step else views.phase_name(m.phase)
    line = (
        f"{clock(ev.realtime_ns)} migration {m.migration_id} {m.guest_id} "
        f"{m.source}->{m.destination or '?'} {views.method_name(m.method)} {what}"
    )
    if not ev.step and m.phase == cpb.MIGRATION_PHASE_SUCCEEDED:
        line += f" downtime={views.ms(m.downtime)}ms counter_error={views.counter_error(m)}ticks"
    if m.reason:
        line += f": {m.reason}"
    return line


def node_line(ev: cpb.NodeHealthEvent) -> str:
    n = ev.node
    state = "up" if n.healthy else "DOWN"
    tail = f": {n.last_error}" if n.last_error else ""
    return (
        f"{clock(ev.realtime_ns)} node {n.node_id} {state} guests={n.guest_count} vcpus={n.vcpu_count}{tail}"
    )


def item_lines(item: cpb.ClusterTelemetry) -> list[str]:
    kind = item.WhichOneof("item")
    if kind == "samples":
        return [sample_line(s) for s in item.samples.samples]
    if kind == "migration":
        return [event_line(item.migration)]
    if kind == "node":
        return [node_line(item.node)]
    return []


@dataclass(slots=True)
class WatchState:
    """What the live view shows: the last sample of every vCPU, the recent events, counters."""

    cntfrq_hz: dict[str, int] = field(default_factory=dict)  # by node (from ListNodes)
    latest: dict[tuple[str, int], pb.TelemetrySample] = field(default_factory=dict)
    origin: dict[str, tuple[int, int]] = field(default_factory=dict)  # guest -> (realtime, cntvct)
    events: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_EVENTS))
    items: int = 0
    samples: int = 0
    dropped: int = 0  # the stream's own count of items dropped for this client

    def add(self, item: cpb.ClusterTelemetry) -> None:
        self.items += 1
        self.dropped = max(self.dropped, item.dropped)
        kind = item.WhichOneof("item")
        if kind == "samples":
            for s in item.samples.samples:
                guest = s.guest_id or s.vm_id
                self.samples += 1
                self.latest[(guest, s.vcpu_index)] = s
                if s.running and guest not in self.origin:
                    self.origin[guest] = (s.realtime_ns, s.cntvct)
        else:
            self.events.extend(item_lines(item))

    def drift_us(self, guest: str, s: pb.TelemetrySample) -> float | None:
        """Guest counter minus ideal time since the first sample of this watch, in µs."""
        freq = self.cntfrq_hz.get(s.node_id)
        origin = self.origin.get(guest)
        if not freq or origin is None or not s.running:
            return None
        t0, v0 = origin
        delta = signed64(s.cntvct - v0)
        return (delta - (s.realtime_ns - t0) * freq / NS_PER_S) * 1e6 / freq

    def render(self, header: str) -> str:
        rows = []
        for (guest, vcpu), s in sorted(self.latest.items()):
            drift = self.drift_us(guest, s)
            rows.append(
                (
                    guest,
                    vcpu,
                    s.node_id,
                    s.cntvct,
                    s.cntpct,
                    s.voffset,
                    s.poffset,
                    "cntpoff" if s.uses_cntpoff else ("trap" if s.traps_cntpct else "direct"),
                    s.trap_count,
                    f"{s.vtimer_ctl}/{int(s.vtimer_level)}",
                    f"{s.ptimer_ctl}/{int(s.ptimer_level)}",
                    "" if drift is None else f"{drift:+.1f}",
                    "run" if s.running else "paused",
                )
            )
        table = views.table(
            (
                "GUEST",
                "VCPU",
                "NODE",
                "CNTVCT",
                "CNTPCT",
                "VOFFSET",
                "POFFSET",
                "PHYS",
                "TRAPS",
                "VT CTL/IRQ",
                "PT CTL/IRQ",
                "DRIFT US",
                "STATE",
            ),
            rows,
        )
        lines = [
            header,
            f"items {self.items}  samples {self.samples}  dropped by the stream {self.dropped}",
            "",
            table if rows else "(no vCPU samples yet)",
            "",
            "recent events:",
            *(self.events or ["(none yet)"]),
        ]
        return "\n".join(lines)


# --- watch: the command --------------------------------------------------------------------


class _Cancellable(Protocol):
    """A streaming call (grpc.Call + grpc.Future): cancel() ends it."""

    def cancel(self) -> bool: ...


def _matches(ev: cpb.MigrationEvent, guests: set[str], nodes: set[str]) -> bool:
    m = ev.migration
    return (not guests or m.guest_id in guests) and (not nodes or bool({m.source, m.destination} & nodes))


@dataclass(frozen=True, slots=True)
class WatchSettings:
    connection: client.Connection
    output: str  # --output table | json
    guest: tuple[str, ...]  # --guest: only these guests
    node: tuple[str, ...]  # --node: only these nodes
    events_only: bool  # --events-only
    count: int  # --count N items (0: no limit)
    duration: float | None  # --duration seconds


@dataclass(frozen=True, slots=True)
class ReportSettings:
    connection: client.Connection
    source: Path | None  # --from FILE (None: the controller's records)
    out: Path  # --out FILE.png
    width: int  # --width pixels
    height: int  # --height pixels
    unit: str  # --unit auto | us | ms | ticks
    guest: tuple[str, ...]  # --guest: only these guests


def telemetry_items(
    stub: cpb_grpc.ControllerStub, args: WatchSettings, on_call: Callable[[_Cancellable], None]
) -> Iterator[cpb.ClusterTelemetry]:
    """The controller's WatchTelemetry stream; a controller without it (UNIMPLEMENTED) falls
    back to WatchMigrations (migration events only, filtered here)."""
    request = cpb.WatchClusterTelemetryRequest(
        node_ids=list(args.node), guest_ids=list(args.guest), events_only=args.events_only
    )
    call = stub.WatchTelemetry(request)
    on_call(call)
    try:
        yield from call
        return
    except grpc.RpcError as err:
        if not isinstance(err, grpc.Call) or err.code() != grpc.StatusCode.UNIMPLEMENTED:
            raise
    client.error(
        args.connection.command, "this controller has no WatchTelemetry: showing migration events only"
    )
    events = stub.WatchMigrations(cpb.WatchMigrationsRequest())
    on_call(events)
    guests, nodes = set(args.guest), set(args.node)
    for ev in events:
        if _matches(ev, guests, nodes):
            yield cpb.ClusterTelemetry(migration=ev)


def cmd_watch(args: WatchSettings, stub: cpb_grpc.ControllerStub) -> int:
    out: TextIO = sys.stdout
    live = out.isatty() and args.output != "json"
    state = WatchState()
    if live:
        try:
            nodes: cpb.ListNodesResponse = stub.ListNodes(cpb.ListNodesRequest(), timeout=5.0)
            state.cntfrq_hz = {n.node_id: n.cntfrq_hz for n in nodes.nodes}
        except grpc.RpcError:
            pass
    current: list[_Cancellable] = []
    stopped = threading.Event()

    def stop() -> None:
        stopped.set()
        for call in current:
            call.cancel()

    timer = threading.Timer(args.duration, stop) if args.duration else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    header = f"kvmtimer watch: controller {args.connection.controller}" + (
        " (events only)" if args.events_only else ""
    )
    shown = 0
    last_draw = 0.0
    if live:
        out.write("\x1b[?25l")
    try:
        for item in telemetry_items(stub, args, current.append):
            if args.output == "json":
                out.write(record.item_to_json(item) + "\n")
                out.flush()
            elif live:
                state.add(item)
                now = time.monotonic()
                if now - last_draw >= REDRAW_S:
                    last_draw = now
                    out.write("\x1b[H\x1b[2J" + state.render(header) + "\n")
                    out.flush()
            else:
                if item.dropped > state.dropped:
                    out.write(f"# the stream dropped {item.dropped} items so far (this client is slow)\n")
                state.dropped = max(state.dropped, item.dropped)
                for line in item_lines(item):
                    out.write(line + "\n")
                out.flush()
            shown += 1
            if args.count and shown >= args.count:
                break
    except grpc.RpcError as err:
        if not (stopped.is_set() and isinstance(err, grpc.Call) and err.code() == grpc.StatusCode.CANCELLED):
            raise
    except KeyboardInterrupt:
        pass
    finally:
        if timer is not None:
            timer.cancel()
        for call in current:
            call.cancel()
        if live:
            out.write("\x1b[?25h\n")
            out.flush()
    return client.EXIT_OK


# --- report ---------------------------------------------------------------------------------


def controller_items(args: ReportSettings) -> tuple[list[cpb.ClusterTelemetry], str]:
    """Finished migrations and node statuses from the controller (no samples), and its address."""
    out: list[cpb.ClusterTelemetry] = []
    where: list[str] = []

    def fetch(resolved: ReportSettings, stub: cpb_grpc.ControllerStub) -> int:
        where.append(f"controller {resolved.connection.controller}")
        timeout = client.timeout(resolved)
        nodes: cpb.ListNodesResponse = stub.ListNodes(cpb.ListNodesRequest(), timeout=timeout)
        out.extend(cpb.ClusterTelemetry(node=cpb.NodeHealthEvent(node=n)) for n in nodes.nodes)
        listed: cpb.ListMigrationsResponse = stub.ListMigrations(cpb.ListMigrationsRequest(), timeout=timeout)
        out.extend(
            cpb.ClusterTelemetry(
                migration=cpb.MigrationEvent(migration=m, realtime_ns=m.finished_realtime_ns)
            )
            for m in listed.migrations
        )
        return client.EXIT_OK

    code = client.run_client(fetch)(args)
    if code != client.EXIT_OK:
        raise _Exit(code)
    return out, where[0]


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def cmd_report(args: ReportSettings) -> int:
    from controller.telemetry import report

    try:
        if args.source is not None:
            items: Iterable[cpb.ClusterTelemetry] = list(record.read_recording(args.source))
            origin = str(args.source)
        else:
            items, origin = controller_items(args)
    except _Exit as done:
        return done.code
    except (OSError, ValueError) as err:
        client.error("report", str(err))
        return client.EXIT_REFUSED
    data = report.build_report(items, args.guest)
    if data.empty:
        client.error("report", f"nothing to plot: no guest samples or finished migrations in {origin}")
        return client.EXIT_FAILED
    try:
        report.render(data, args.out, width_px=args.width, height_px=args.height, unit=args.unit)
    except OSError as err:
        client.error("report", f"cannot write {args.out}: {err}")
        return client.EXIT_REFUSED
    print(
        f"kvmtimer report: {args.out} ({args.width}x{args.height}): {_count(len(data.guests), 'guest')}, "
        f"{_count(data.migrations, 'migration')}, {_count(data.samples, 'sample')} from {origin}"
    )
    text = skew_text(skew.skew_summary(items, args.guest))
    if text:
        print(text)
    return client.EXIT_OK


def _us(ns: int) -> str:
    return f"{ns / 1000:+.1f}"


def skew_text(summary: skew.SkewSummary) -> str:
    """The pairs as a table, then each host against the reference (empty without migrations)."""
    if summary.empty:
        return ""
    rows = [
        (
            p.source,
            p.destination,
            p.migrations,
            _us(p.skew_ns_mean),
            _us(p.skew_ns_min)
            if p.skew_ns_min == p.skew_ns_max
            else f"{_us(p.skew_ns_min)}..{_us(p.skew_ns_max)}",
            p.offset_moves,
            "-" if p.offset_error_ticks_max is None else p.offset_error_ticks_max,
        )
        for p in summary.pairs
    ]
    lines = [
        "Realtime skew (destination minus source realtime, measured at each migration; an offset"
        " method's counter error is this skew, BY_VALUE's the downtime):",
        views.table(
            (
                "SOURCE",
                "DESTINATION",
                "MIGRATIONS",
                "SKEW MEAN US",
                "RANGE US",
                "OFFSET MOVES",
                "MAX |ERR| TICKS",
            ),
            rows,
        ),
    ]
    linked = ", ".join(f"{h} {_us(v)} µs" for h, v in summary.hosts.items() if v is not None)
    unlinked = [h for h, v in summary.hosts.items() if v is None]
    lines.append(
        f"Hosts' realtime against {summary.reference}, through the migrations: {linked}"
        + (f"; no migration links {', '.join(unlinked)}" if unlinked else "")
    )
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


# --- parser ---------------------------------------------------------------------------------


def _watch(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Follow the controller's WatchTelemetry stream. On a terminal: a live table of every "
        "vCPU's last sample and the recent events; otherwise one plain line per sample or "
        "event. --output json prints one JSON item per line (the `up --record` format, which "
        "`kvmtimer report --from` reads). Ends on Ctrl-C, --count or --duration."
    )
    client._common(p)
    p.add_argument("--guest", action="append", default=[], metavar="ID", help="only this guest (repeatable)")
    p.add_argument("--node", action="append", default=[], metavar="ID", help="only this node (repeatable)")
    p.add_argument("--events-only", action="store_true", help="migration and node events, no vCPU samples")
    p.add_argument("--count", type=non_negative_int, default=0, metavar="N", help="stop after N items")
    p.add_argument("--duration", type=positive_float, default=None, metavar="S", help="stop after S seconds")
    p.set_defaults(func=settings.command(WatchSettings, client.run_client(cmd_watch)))


def _report(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Draw each guest's counter minus ideal time across its migrations, BY_VALUE and the "
        "offset methods side by side, migrations marked. Reads a recording (`kvmtimer up "
        "--record FILE` or `kvmtimer watch --output json`) with --from, else the controller's "
        "migration records (no samples: each migration's measured counter error)."
    )
    client._common(p, output=False)
    p.add_argument("--from", dest="source", type=Path, default=None, metavar="FILE", help="recorded JSONL")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.png", help="PNG to write")
    p.add_argument(
        "--width",
        type=int_between(100, 10_000, "pixels"),
        default=1400,
        metavar="PX",
        help="image width (default 1400)",
    )
    p.add_argument(
        "--height",
        type=int_between(100, 10_000, "pixels"),
        default=700,
        metavar="PX",
        help="image height (default 700)",
    )
    p.add_argument(
        "--unit",
        choices=("auto", "us", "ms", "ticks"),
        default="auto",
        help="y axis: µs, ms or counter ticks (default auto: ms once an error reaches 10 ms)",
    )
    p.add_argument("--guest", action="append", default=[], metavar="ID", help="only this guest (repeatable)")
    p.set_defaults(func=settings.command(ReportSettings, cmd_report))


CONFIGURE: dict[str, Callable[[argparse.ArgumentParser], None]] = {"watch": _watch, "report": _report}
"""Telemetry command name -> what adds its options and sets its `func` (help: controller.cli)."""
