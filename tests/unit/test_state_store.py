"""The controller's state file (controller.service.store).

Edge cases covered:
- a missing file (and its directory) is created, WAL mode, current schema version, our application id
- everything written is read back after closing and reopening (guests, migration records with
  their enums, journal rows, nodes), and the journal log keeps every transition in order
- id counters never return a number twice, across reopenings
- tombstoned guests keep their ids taken
- a transaction that raises leaves nothing behind
- refused, and left byte-for-byte untouched: a file that is not a database, another program's
  database, a newer schema version, a directory
- an older schema is upgraded in place; version 1's in-flight journal at the old "restore" step
  (before restore and resume became one step) reads as "transfer" (both roll back), log included
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from controller.core.machine import Journal, Outcome, VmRef
from controller.core.migration import Method, MigrationRecord, Phase, Step
from controller.core.model import GuestId, GuestState, MigrationId, NodeId
from controller.core.recovery import GuestPlacement
from controller.service.store import (
    APPLICATION_ID,
    EXIT_STATE_CORRUPT,
    EXIT_STATE_TOO_NEW,
    SCHEMA_VERSION,
    StateFileError,
    Store,
    StoredGuest,
)
from node.core.workload import WorkloadSpec

GUEST = StoredGuest(
    GuestPlacement(GuestId("g"), VmRef(NodeId("a"), "g@0"), GuestState.RUNNING, 2, ""),
    vcpus=3,
    workload=WorkloadSpec(period_ticks=250_000, use_ptimer=True),
    migrations=2,
    history=("b", "a"),
)
JOURNAL = Journal(MigrationId("m1"), GuestId("g"), VmRef(NodeId("a"), "g@0"), VmRef(NodeId("b"), "g@m1"), 3)


def test_missing_file_is_created_with_the_current_schema(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.db"
    Store.open(path).close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_everything_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = Store.open(path)
    store.put_node("a", "127.0.0.1:1")
    store.put_node("a", "127.0.0.1:2")
    store.put_guest(GUEST)
    record = MigrationRecord(
        MigrationId("m1"), GuestId("g"), NodeId("a"), NodeId("b"), Method.AUTO, method=Method.VCPU_OFFSETS
    )
    record.phase = Phase.RUNNING
    record.steps = ["prepare", "pause"]
    store.put_migration(record)
    store.put_journal(JOURNAL)
    store.put_journal(replace(JOURNAL, step=Step.PREPARE))
    store.put_journal(replace(JOURNAL, step=Step.ROLLBACK, outcome=Outcome.ROLLED_BACK))
    store.close()

    again = Store.open(path)
    assert again.nodes() == [("a", "127.0.0.1:2")]
    assert again.guests() == [GUEST]
    (back,) = again.migrations()
    assert back == record and back.method is Method.VCPU_OFFSETS and back.phase is Phase.RUNNING
    (j,) = again.journals()
    assert (j.step, j.outcome) == (Step.ROLLBACK, Outcome.ROLLED_BACK)
    assert again.journal_log("m1") == [
        (None, Outcome.IN_FLIGHT),
        (Step.PREPARE, Outcome.IN_FLIGHT),
        (Step.ROLLBACK, Outcome.ROLLED_BACK),
    ]
    assert again.migration_id_taken("m1") and not again.migration_id_taken("m2")
    again.close()


def test_ids_are_never_returned_twice(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = Store.open(path)
    assert [store.next_number("guest") for _ in range(3)] == [1, 2, 3]
    assert store.next_number("migration") == 1
    store.close()
    store = Store.open(path)
    assert store.next_number("guest") == 4
    store.close()


def test_tombstones_keep_ids_taken(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.db")
    dead = StoredGuest(
        GuestPlacement(GuestId("x"), VmRef(NodeId("a"), "x@0"), GuestState.DESTROYED), 1, WorkloadSpec(1000)
    )
    store.put_guest(dead)
    assert store.guest_id_taken("x") and not store.guest_id_taken("y")
    store.close()


def test_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.db")
    with pytest.raises(RuntimeError), store.transaction():
        store.put_guest(GUEST)
        store.put_node("a", "x:1")
        raise RuntimeError("crash")
    assert store.guests() == [] and store.nodes() == []
    store.close()


def _refused(path: Path, code: int, match: str) -> None:
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(StateFileError, match=match) as err:
        Store.open(path)
    assert err.value.exit_code == code
    if before is not None:
        assert path.read_bytes() == before


def test_garbage_file_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not sqlite at all\n" * 100)
    _refused(path, EXIT_STATE_CORRUPT, "not a kvmtimer state database")


def test_truncated_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = Store.open(path)
    for i in range(200):
        store.put_node(f"n{i}", "x" * 200)
    store.close()
    data = path.read_bytes()
    path.write_bytes(data[:4096] + b"\xff" * 4096 + data[8192:])
    _refused(path, EXIT_STATE_CORRUPT, "state file")


def test_foreign_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    _refused(path, EXIT_STATE_CORRUPT, "another program")


def test_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    Store.open(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    _refused(path, EXIT_STATE_TOO_NEW, "newer than this controller")


def test_directory_is_refused(tmp_path: Path) -> None:
    _refused(tmp_path, EXIT_STATE_CORRUPT, "not a regular file")


def test_older_schema_is_upgraded_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from controller.service import store as store_mod

    path = tmp_path / "state.db"
    old = Store.open(path)
    old.put_guest(GUEST)
    old.close()
    extra = "ALTER TABLE nodes ADD COLUMN labels TEXT NOT NULL DEFAULT ''"
    monkeypatch.setattr(store_mod, "MIGRATIONS", (*store_mod.MIGRATIONS, extra))
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    new = Store.open(path)
    assert new.guests() == [GUEST]
    new.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    assert "labels" in [r[1] for r in db.execute("PRAGMA table_info(nodes)")]
    db.close()


def test_version_1_restore_step_reads_as_transfer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from controller.service import store as store_mod

    path = tmp_path / "state.db"
    with monkeypatch.context() as m:
        m.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS[:1])
        m.setattr(store_mod, "SCHEMA_VERSION", 1)
        Store.open(path).close()
    db = sqlite3.connect(path)
    row = ("m1", "g", "a", "g@0", "b", "g@m1", 3, "restore", "in_flight", "")
    db.execute("INSERT INTO journal VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
    db.executemany(
        "INSERT INTO journal_log(migration_id, step, outcome, reason) VALUES('m1', ?, 'in_flight', '')",
        [("transfer",), ("restore",)],
    )
    db.commit()
    db.close()
    new = Store.open(path)
    assert new.journals() == [replace(JOURNAL, step=Step.TRANSFER)]
    assert new.journal_log("m1") == [(Step.TRANSFER, Outcome.IN_FLIGHT)] * 2
    new.close()
