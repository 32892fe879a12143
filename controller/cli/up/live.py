"""The live view of `kvmtimer up`: a full-screen table on a terminal, else a status line now and then."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys

import grpc

from controller.cli import views
from controller.cli.up.scenario import Demo

REFRESH_S = 0.5  # live view period
PROGRESS_S = 5.0  # plain-mode status line period


async def view_loop(demo: Demo, stop: asyncio.Event) -> None:
    next_progress = PROGRESS_S
    while not stop.is_set():
        if demo.tty:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await demo.refresh()
            draw(demo)
        elif demo.elapsed() >= next_progress:
            next_progress += PROGRESS_S
            with contextlib.suppress(grpc.aio.AioRpcError):
                await demo.refresh()
            demo.say(status_line(demo))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), REFRESH_S)


def status_line(demo: Demo) -> str:
    ok, failed, refused = demo.counts()
    up = sum(1 for n in demo.nodes if n.healthy)
    return (
        f"nodes {up}/{len(demo.nodes)} up, {len(demo.guests)} guests, migrations: "
        f"{ok} succeeded, {failed} failed, {refused} refused, {len(demo.in_flight)} in flight"
    )


def frame(demo: Demo) -> str:
    header = (
        f"kvmtimer up  controller {demo.address}  {demo.elapsed():.1f} s"
        + (f" / {demo.settings.duration:g} s" if demo.settings.duration else "")
        + "  (Ctrl-C to stop)"
    )
    nodes = views.table(
        ("NODE", "FEATURES", "PROFILE", "CNTFRQ", "HEALTH", "GUESTS", "VCPUS"),
        (
            (
                n.node_id,
                views.features_label(n),
                views.profile_name(n.api_profile),
                views.frequency_label(n.cntfrq_hz),
                "up" if n.healthy else "DOWN",
                n.guest_count,
                n.vcpu_count,
            )
            for n in demo.nodes
        ),
    )
    guests = views.table(
        ("GUEST", "NODE", "VCPUS", "PTIMER", "MIGRATIONS", "LAST COUNTER ERROR (TICKS)"),
        (
            (
                g.guest_id,
                g.node_id + (f" -> {g.migrating}" if g.migrating else ""),
                g.vcpus,
                "yes" if g.workload.use_ptimer else "no",
                g.migrations,
                demo.last_error.get(g.guest_id),
            )
            for g in demo.guests
        ),
    )
    migrations = views.table(
        (
            "MIGRATION",
            "GUEST",
            "SOURCE->DEST",
            "METHOD",
            "PHASE",
            "DOWNTIME MS",
            "ERR TICKS",
            "APPLIED AS",
            "LOST",
        ),
        (
            (
                m.migration_id,
                m.guest_id,
                f"{m.source}->{m.destination}",
                views.method_name(m.method),
                views.phase_name(m.phase),
                views.ms(m.downtime) if m.downtime else None,
                views.counter_error(m),
                m.applied_as,
                views.state_lost(m) or None,
            )
            for m in reversed(demo.recent.values())
        ),
    )
    lines = [header, status_line(demo), "", nodes, "", guests, "", "Last migrations", migrations]
    if demo.refusals:
        r = demo.refusals[-1]
        lines += ["", f"Last refusal: {r.guest_id} -> {r.destination}: {r.code}: {r.details}"]
    return "\n".join(lines)


def draw(demo: Demo) -> None:
    width = shutil.get_terminal_size().columns
    text = "\n".join(line[:width] + "\x1b[K" for line in frame(demo).split("\n"))
    sys.stdout.write("\x1b[H" + text + "\n\x1b[J")
    sys.stdout.flush()
