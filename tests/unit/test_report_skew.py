"""Realtime skew per host pair and per host from migration records (controller.telemetry.skew).

Edge cases covered:
- several moves of one pair aggregate (count, mean, range when the skew changed: drift);
- a move the other way counts with the opposite sign when walking from the reference host;
- a host known only from its node status (no migration) has no figure, and is named as such;
- failed migrations, and earlier records of a migration, do not count; --guest filters;
- only offset-method moves count towards the counter error column (BY_VALUE's is the downtime);
- no migration: an empty summary and no text.
"""

from __future__ import annotations

from kvmtimer.v1 import controller_pb2 as cpb

from controller.cli.telemetry import skew_text
from controller.telemetry.skew import PairSkew, skew_summary

CO = cpb.MIGRATION_METHOD_VM_COUNTER_OFFSET
BV = cpb.MIGRATION_METHOD_BY_VALUE


def move(
    mid: str,
    source: str,
    destination: str,
    skew_ns: int,
    method: int = CO,
    *,
    guest: str = "g1",
    error: int = 0,
) -> cpb.ClusterTelemetry:
    m = cpb.Migration(
        migration_id=mid,
        guest_id=guest,
        source=source,
        destination=destination,
        method=method,  # type: ignore[arg-type]
        phase=cpb.MIGRATION_PHASE_SUCCEEDED,
        realtime_skew_ns=skew_ns,
        counter_error_ticks=error,
    )
    return cpb.ClusterTelemetry(migration=cpb.MigrationEvent(migration=m))


def node(node_id: str) -> cpb.ClusterTelemetry:
    return cpb.ClusterTelemetry(node=cpb.NodeHealthEvent(node=cpb.NodeStatus(node_id=node_id)))


def test_pairs_and_hosts_against_the_reference() -> None:
    running = move("m0", "a", "b", 999_999)
    running.migration.migration.phase = cpb.MIGRATION_PHASE_RUNNING
    failed = move("m9", "a", "c", 777_777)
    failed.migration.migration.phase = cpb.MIGRATION_PHASE_FAILED
    items = [
        node("a"),
        node("d"),
        running,  # superseded by its final record below
        move("m0", "a", "b", 50_000, error=-1_250),
        move("m1", "a", "b", 52_000, error=1_300),  # b drifted 2 µs further
        move("m2", "b", "c", -20_000, BV, error=-500_000),
        move("m3", "c", "a", -30_000, guest="g2", error=750),
        failed,
    ]
    summary = skew_summary(items)
    assert summary.pairs == [
        PairSkew("a", "b", 2, 50_000, 52_000, 51_000, 2, 1_300),
        PairSkew("b", "c", 1, -20_000, -20_000, -20_000, 0, None),
        PairSkew("c", "a", 1, -30_000, -30_000, -30_000, 1, 750),
    ]
    assert summary.reference == "a"
    # c is reached from a directly (a -> c is +30 µs: c -> a was -30 µs), not through b.
    assert summary.hosts == {"a": 0, "b": 51_000, "c": 30_000, "d": None}
    text = skew_text(summary)
    assert "a       b            2           +51.0         +50.0..+52.0  2             1300" in text
    assert "Hosts' realtime against a, through the migrations: a +0.0 µs, b +51.0 µs, c +30.0 µs" in text
    assert text.endswith("; no migration links d")
    only_g2 = skew_summary(items, ["g2"])
    assert [(p.source, p.destination) for p in only_g2.pairs] == [("c", "a")]
    assert only_g2.hosts == {"a": 0, "c": 30_000, "d": None}


def test_no_migrations_no_text() -> None:
    summary = skew_summary([node("a")])
    assert summary.empty and summary.reference is None and summary.hosts == {"a": None}
    assert skew_text(summary) == ""
