"""`kvmtimer controller --state FILE` killed with SIGKILL and started again (real processes).

Edge cases covered:
- the restart scenario of issue #11: guests created (one migrated), the controller killed -9,
  started again on the same state file and nodes: every guest is listed again where it runs,
  no VM on any node was destroyed or created, the next guest and migration get new ids
- a state file that is not a database: the controller exits 5 with the reason, the file is
  left byte-for-byte untouched; a newer schema exits 6
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from kvmtimer.v1 import controller_pb2 as cpb
from kvmtimer.v1 import node_pb2 as pb
from kvmtimer.v1 import node_pb2_grpc as pb_grpc

from controller.service.store import EXIT_STATE_CORRUPT, EXIT_STATE_TOO_NEW, SCHEMA_VERSION, Store
from tests.faults.campaign import Campaign

pytestmark = pytest.mark.e2e


def vms(stubs: dict[str, pb_grpc.NodeStub]) -> dict[str, set[tuple[str, bool]]]:
    return {
        n: {(v.vm_id, v.running) for v in s.ListVms(pb.ListVmsRequest(), timeout=10).vms}
        for n, s in stubs.items()
    }


def test_kill_9_and_restart_lists_every_guest_and_destroys_nothing(tmp_path: Path) -> None:
    campaign = Campaign(tmp_path)
    with campaign.running():
        campaign.start_controller(None)
        assert campaign.controller is not None and campaign.controller.popen is not None
        stub = campaign.stub
        made = [stub.CreateGuest(cpb.CreateGuestRequest(node_id=n), timeout=10) for n in ("a", "a", "b")]
        moved = stub.Migrate(
            cpb.MigrateRequest(guest_id=made[0].guest_id, destination="b", wait=True), timeout=30
        )
        assert moved.phase == cpb.MIGRATION_PHASE_SUCCEEDED, moved.reason
        made[0] = stub.GetGuest(cpb.GetGuestRequest(guest_id=made[0].guest_id), timeout=10)
        before = vms(campaign.node_stubs)
        assert sum(len(v) for v in before.values()) == 3
        campaign.controller.kill()
        campaign.start_controller(None)
        listed = {g.guest_id: g for g in stub.ListGuests(cpb.ListGuestsRequest(), timeout=10).guests}
        assert {g: (x.node_id, x.vm_id, x.state) for g, x in listed.items()} == {
            g.guest_id: (g.node_id, g.vm_id, cpb.GUEST_STATE_RUNNING) for g in made
        }
        assert vms(campaign.node_stubs) == before  # nothing destroyed, nothing created
        new = stub.CreateGuest(cpb.CreateGuestRequest(node_id="b"), timeout=10)
        assert new.guest_id not in listed and new.vm_id not in {v for s in before.values() for v, _ in s}
        again = stub.Migrate(
            cpb.MigrateRequest(guest_id=new.guest_id, destination="a", wait=True), timeout=30
        )
        assert again.phase == cpb.MIGRATION_PHASE_SUCCEEDED and again.migration_id != moved.migration_id
        nodes = stub.ListNodes(cpb.ListNodesRequest(), timeout=10).nodes
        assert all(not n.orphans and not n.lost_guests for n in nodes)


def run_controller(state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "controller.cli",
            "controller",
            "--listen",
            "127.0.0.1:0",
            "--state",
            str(state),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_unusable_state_file_stops_the_controller_untouched(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database\n" * 200)
    done = run_controller(garbage)
    assert done.returncode == EXIT_STATE_CORRUPT
    assert "controller_state_refused" in done.stderr and "not a kvmtimer state database" in done.stderr
    assert garbage.read_bytes() == b"not a database\n" * 200

    newer = tmp_path / "newer.db"
    Store.open(newer).close()
    db = sqlite3.connect(newer)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    data = newer.read_bytes()
    done = run_controller(newer)
    assert done.returncode == EXIT_STATE_TOO_NEW and "newer than this controller" in done.stderr
    assert newer.read_bytes() == data
