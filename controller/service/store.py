"""The controller's durable state: one SQLite file (stdlib sqlite3, WAL mode).

Tables: nodes, guests (destroyed and failed ones stay as tombstones so their ids are
never reused), migration records, the migration journal (the machine's current step
per migration) and its append-only log, and the id counters. Every write is its own
committed transaction unless grouped with `transaction()`; the executor commits a
journal step before it sends the step's command (controller.core.machine).

The schema is versioned (`PRAGMA user_version`) and upgraded by the ordered scripts in
`MIGRATIONS`. A missing file is created. A file that is not a database, is not ours
(`PRAGMA application_id`), fails `quick_check`, or was written by a newer schema is
refused with StateFileError and left untouched: it is never overwritten.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.core.machine import Journal, Outcome, VmRef
from controller.core.migration import Method, MigrationRecord, Phase, Step
from controller.core.model import GuestId, GuestState, MigrationId, NodeId
from controller.core.recovery import GuestPlacement
from node.core.workload import WorkloadSpec

# 'kvmt': marks the file as a kvmtimer controller state file.
APPLICATION_ID = 0x6B766D74
# Exit codes of `kvmtimer controller` for a state file it refuses.
EXIT_STATE_CORRUPT = 5
EXIT_STATE_TOO_NEW = 6

# Schema upgrades: MIGRATIONS[i] takes user_version i to i + 1.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE nodes (
        node_id TEXT PRIMARY KEY,
        address TEXT NOT NULL
    );
    CREATE TABLE counters (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    );
    CREATE TABLE guests (
        guest_id TEXT PRIMARY KEY,
        node_id TEXT NOT NULL,
        vm_id TEXT NOT NULL,
        state TEXT NOT NULL,
        generation INTEGER NOT NULL,
        reason TEXT NOT NULL,
        vcpus INTEGER NOT NULL,
        workload TEXT NOT NULL,
        migrations INTEGER NOT NULL,
        history TEXT NOT NULL
    );
    CREATE TABLE migrations (
        migration_id TEXT PRIMARY KEY,
        guest_id TEXT NOT NULL,
        record TEXT NOT NULL
    );
    CREATE TABLE journal (
        migration_id TEXT PRIMARY KEY,
        guest_id TEXT NOT NULL,
        source_node TEXT NOT NULL,
        source_vm TEXT NOT NULL,
        destination_node TEXT NOT NULL,
        destination_vm TEXT NOT NULL,
        generation INTEGER NOT NULL,
        step TEXT,
        outcome TEXT NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE TABLE journal_log (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        migration_id TEXT NOT NULL,
        step TEXT,
        outcome TEXT NOT NULL,
        reason TEXT NOT NULL
    );
    """,
    # 2: restore and resume became one journaled step (RESUME, one node batch). A journal at
    # the old "restore" step had not told the destination to resume: to recovery "transfer"
    # means the same (roll back).
    """
    UPDATE journal SET step = 'transfer' WHERE step = 'restore';
    UPDATE journal_log SET step = 'transfer' WHERE step = 'restore';
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class StateFileError(Exception):
    """The state file cannot be used; `exit_code` is what the controller exits with."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class StoredGuest:
    """A guest row: where it is, plus what recreating its record needs."""

    placement: GuestPlacement  # whereabouts and lifecycle
    vcpus: int  # vCPU count
    workload: WorkloadSpec  # its program
    migrations: int = 0  # completed moves
    history: tuple[str, ...] = ()  # nodes it lived on


class Store:
    """One open state file. Not thread-safe; used from the controller's event loop."""

    def __init__(self, db: sqlite3.Connection, path: str) -> None:
        self._db = db
        self.path = path

    @classmethod
    def open(cls, path: str | Path) -> Store:
        """Open (creating if missing) and upgrade the state file; StateFileError if unusable."""
        where = str(path)
        if where != ":memory:":
            p = Path(where)
            if p.exists() and not p.is_file():
                raise StateFileError(f"state file {where} is not a regular file", EXIT_STATE_CORRUPT)
        try:
            if where != ":memory:":
                Path(where).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(where, isolation_level=None, check_same_thread=False)
        except (sqlite3.Error, OSError) as err:
            raise StateFileError(f"cannot open state file {where}: {err}", EXIT_STATE_CORRUPT) from None
        try:
            _check_and_upgrade(db, where)
        except BaseException:
            db.close()
            raise
        return cls(db, where)

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes into one atomic commit (nesting joins the outer one)."""
        if self._db.in_transaction:
            yield
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- ids -----------------------------------------------------------------

    def next_number(self, name: str) -> int:
        """The next number of counter `name` (1, 2, ...), never returned again, even after a restart."""
        with self.transaction():
            row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
            value = (row[0] if row else 0) + 1
            self._db.execute(
                "INSERT INTO counters(name, value) VALUES(?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                (name, value),
            )
        return int(value)

    def guest_id_taken(self, guest_id: str) -> bool:
        """Used by any guest, alive or not (ids are never reused)."""
        row = self._db.execute("SELECT 1 FROM guests WHERE guest_id = ?", (guest_id,)).fetchone()
        return row is not None

    def migration_id_taken(self, migration_id: str) -> bool:
        row = self._db.execute("SELECT 1 FROM migrations WHERE migration_id = ?", (migration_id,)).fetchone()
        return row is not None

    # --- nodes ---------------------------------------------------------------

    def put_node(self, node_id: str, address: str) -> None:
        self._db.execute(
            "INSERT INTO nodes(node_id, address) VALUES(?, ?) "
            "ON CONFLICT(node_id) DO UPDATE SET address = excluded.address",
            (node_id, address),
        )

    def nodes(self) -> list[tuple[NodeId, str]]:
        rows = self._db.execute("SELECT node_id, address FROM nodes ORDER BY node_id").fetchall()
        return [(NodeId(r[0]), str(r[1])) for r in rows]

    # --- guests --------------------------------------------------------------

    def put_guest(self, guest: StoredGuest) -> None:
        p = guest.placement
        self._db.execute(
            "INSERT OR REPLACE INTO guests(guest_id, node_id, vm_id, state, generation, reason, vcpus, "
            "workload, migrations, history) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                p.guest_id,
                p.vm.node_id,
                p.vm.vm_id,
                p.state.value,
                p.generation,
                p.reason,
                guest.vcpus,
                json.dumps(dataclasses.asdict(guest.workload)),
                guest.migrations,
                json.dumps(list(guest.history)),
            ),
        )

    def delete_guest(self, guest_id: str) -> None:
        """Forget a destroyed guest (its VM ids are never reused: they come from a counter)."""
        self._db.execute("DELETE FROM guests WHERE guest_id = ?", (guest_id,))

    def guests(self) -> list[StoredGuest]:
        rows = self._db.execute(
            "SELECT guest_id, node_id, vm_id, state, generation, reason, vcpus, workload, migrations, "
            "history FROM guests ORDER BY rowid"
        ).fetchall()
        return [
            StoredGuest(
                GuestPlacement(
                    GuestId(r[0]), VmRef(NodeId(r[1]), r[2]), GuestState(r[3]), int(r[4]), str(r[5])
                ),
                int(r[6]),
                WorkloadSpec(**json.loads(r[7])),
                int(r[8]),
                tuple(json.loads(r[9])),
            )
            for r in rows
        ]

    # --- migrations and the journal --------------------------------------------

    def put_migration(self, record: MigrationRecord) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO migrations(migration_id, guest_id, record) VALUES(?, ?, ?)",
            (record.migration_id, record.guest_id, json.dumps(record_to_json(record))),
        )

    def migrations(self) -> list[MigrationRecord]:
        rows = self._db.execute("SELECT record FROM migrations ORDER BY rowid").fetchall()
        return [record_from_json(json.loads(r[0])) for r in rows]

    def put_journal(self, j: Journal) -> None:
        """Commit one journal transition (and log it)."""
        with self.transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO journal(migration_id, guest_id, source_node, source_vm, "
                "destination_node, destination_vm, generation, step, outcome, reason) "
                "VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    j.migration_id,
                    j.guest_id,
                    j.source.node_id,
                    j.source.vm_id,
                    j.destination.node_id,
                    j.destination.vm_id,
                    j.generation,
                    None if j.step is None else j.step.value,
                    j.outcome.value,
                    j.reason,
                ),
            )
            self._db.execute(
                "INSERT INTO journal_log(migration_id, step, outcome, reason) VALUES(?, ?, ?, ?)",
                (j.migration_id, None if j.step is None else j.step.value, j.outcome.value, j.reason),
            )

    def journals(self) -> list[Journal]:
        rows = self._db.execute(
            "SELECT migration_id, guest_id, source_node, source_vm, destination_node, destination_vm, "
            "generation, step, outcome, reason FROM journal ORDER BY rowid"
        ).fetchall()
        return [
            Journal(
                MigrationId(r[0]),
                GuestId(r[1]),
                VmRef(NodeId(r[2]), r[3]),
                VmRef(NodeId(r[4]), r[5]),
                int(r[6]),
                None if r[7] is None else Step(r[7]),
                Outcome(r[8]),
                str(r[9]),
            )
            for r in rows
        ]

    def journal_log(self, migration_id: str) -> list[tuple[Step | None, Outcome]]:
        rows = self._db.execute(
            "SELECT step, outcome FROM journal_log WHERE migration_id = ? ORDER BY seq", (migration_id,)
        ).fetchall()
        return [(None if r[0] is None else Step(r[0]), Outcome(r[1])) for r in rows]


def _check_and_upgrade(db: sqlite3.Connection, where: str) -> None:
    try:
        app_id = int(db.execute("PRAGMA application_id").fetchone()[0])
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    except sqlite3.DatabaseError as err:
        raise StateFileError(
            f"state file {where} is not a kvmtimer state database ({err}); it was left untouched — "
            "move it away or pass another --state",
            EXIT_STATE_CORRUPT,
        ) from None
    if app_id not in (0, APPLICATION_ID) or (app_id == 0 and tables):
        raise StateFileError(
            f"state file {where} is an SQLite database of another program (application_id {app_id:#x}); "
            "it was left untouched — pass another --state",
            EXIT_STATE_CORRUPT,
        )
    if version > SCHEMA_VERSION:
        raise StateFileError(
            f"state file {where} has schema version {version}, newer than this controller's "
            f"{SCHEMA_VERSION}; run a newer kvmtimer (the file was left untouched)",
            EXIT_STATE_TOO_NEW,
        )
    try:
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(check)
        db.execute("PRAGMA journal_mode = WAL")
        # WAL + NORMAL: a commit survives the controller being killed (-9) at any instant;
        # only an OS crash or power loss can take the last commits back.
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA foreign_keys = ON")
        for target in range(version, SCHEMA_VERSION):
            db.execute("BEGIN IMMEDIATE")
            for statement in _statements(MIGRATIONS[target]):
                db.execute(statement)
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute(f"PRAGMA user_version = {target + 1}")
            db.execute("COMMIT")
    except sqlite3.DatabaseError as err:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise StateFileError(
            f"state file {where} is damaged ({err}); it was left untouched — "
            "restore a backup or move it away",
            EXIT_STATE_CORRUPT,
        ) from None


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


# --- MigrationRecord <-> JSON -----------------------------------------------------------

_ENUMS: dict[str, Any] = {"requested_method": Method, "method": Method, "phase": Phase}


def record_to_json(record: MigrationRecord) -> dict[str, object]:
    out: dict[str, object] = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        out[f.name] = int(value) if isinstance(value, (Method, Phase)) else value
    return out


def record_from_json(data: dict[str, Any]) -> MigrationRecord:
    names = {f.name for f in dataclasses.fields(MigrationRecord)}
    kwargs = {k: v for k, v in data.items() if k in names}  # fields added later keep their defaults
    for name, enum in _ENUMS.items():
        if kwargs.get(name) is not None:
            kwargs[name] = enum(kwargs[name])
    return MigrationRecord(**kwargs)
