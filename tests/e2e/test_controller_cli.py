"""The controller command line as real processes: `kvmtimer up`, `kvmtimer controller` and its clients.

Covers: `kvmtimer up --duration` starts real node processes, migrates guests between
them and exits 0 with a SUMMARY (migrations succeeded, every guest counter monotonic,
no interrupt lost beyond the one in flight, node processes gone, the --record JSONL); a
fleet whose guest timer period no machine keeps (4 us) is reported OVERLOADED, exit 0;
`kvmtimer controller --node` registers two node processes; `create-guest`, `guests`,
`nodes`, `migrate`, `migrations`, `destroy-guest` with `--output json`; refusals (unknown
destination, the node it already runs on, a method the destination lacks) exit 2 with the
status on stderr; an idempotent migration id; an unreachable controller exits 3; SIGTERM
stops the controller cleanly.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.support.nodes import kvmtimer_command, kvmtimer_process, node_process, wait_for_log_event

pytestmark = pytest.mark.e2e

PERIOD_TICKS = 250_000


def _summary(stdout: str) -> dict[str, object]:
    lines = [line for line in stdout.splitlines() if line.startswith("SUMMARY ")]
    assert len(lines) == 1, stdout
    summary = json.loads(lines[0].removeprefix("SUMMARY "))
    assert isinstance(summary, dict)
    return summary


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_up_runs_a_cluster_and_prints_a_summary(tmp_path: Path) -> None:
    record = tmp_path / "migrations.jsonl"
    proc = subprocess.run(
        [
            *kvmtimer_command(),
            "up",
            "--duration",
            "6",
            "--nodes",
            "3",
            "--guests",
            "3",
            "--interval",
            "0.3",
            "--seed",
            "5",
            "--record",
            str(record),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "\x1b[" not in proc.stdout  # not a terminal: plain progress lines, no redrawing
    summary = _summary(proc.stdout)

    counts = summary["migrations"]
    assert isinstance(counts, dict)
    assert counts["succeeded"] >= 3
    # The recording holds telemetry items; each migration's last event carries its final record.
    items = [json.loads(line) for line in record.read_text().splitlines()]
    ended = {"MIGRATION_PHASE_SUCCEEDED", "MIGRATION_PHASE_FAILED"}
    records = [
        i["migration"]["migration"]
        for i in items
        if "migration" in i and not i["migration"]["step"] and i["migration"]["migration"]["phase"] in ended
    ]
    assert len(records) == counts["succeeded"] + counts["failed"]

    nodes = summary["nodes"]
    assert isinstance(nodes, list)
    assert {n["api_profile"] for n in nodes} == {"VM_COUNTER_OFFSET", "VCPU_OFFSETS", "BY_VALUE"}
    assert {(n["ecv"], n["vhe"]) for n in nodes} >= {(2, False), (2, True)}
    assert any(n["ecv"] == 0 for n in nodes)
    assert {n["cntfrq_hz"] for n in nodes} == {25_000_000}
    # Every node process stopped on SIGTERM (exit 0) and is gone.
    assert summary["node_processes_stopped"] is True
    assert [n["exit_code"] for n in nodes] == [0, 0, 0]
    assert not any(_pid_alive(n["pid"]) for n in nodes)

    guests = summary["guests"]
    assert isinstance(guests, list) and len(guests) == 3
    assert summary["all_min_steps_non_negative"] is True
    # Moves that lost a guest's physical timer (a pre-6.4 side) are listed; that guest's
    # physical-timer interrupts stopped, so only its other numbers are checked.
    lossy = summary["moved_with_state_loss"]
    assert isinstance(lossy, list)
    lost = {x["guest_id"] for x in lossy}
    assert all(x["not_carried"][:2] == ["PTIMER_CTL", "PTIMER_CVAL"] for x in lossy)
    # A guest moved by value to the 5.15 host reads that host's physical counter there (not
    # carried, as on real hardware): only its virtual counter must stay monotonic.
    reset_ids = summary["physical_counter_reset_by_value"]
    assert isinstance(reset_ids, list)
    reset = set(reset_ids)
    for g in guests:
        assert g["min_step_virtual" if g["guest_id"] in reset else "min_step"] >= 0, g
        if g["guest_id"] in lost:
            assert g["use_ptimer"] and g["interrupts_received"] > 0, g
            continue
        # Only the interrupt in flight when the observation was taken may be missing, per timer.
        timers = g["vcpus"] * (2 if g["use_ptimer"] else 1)
        assert g["max_timer_shortfall"] <= 1, g
        assert g["interrupts_received"] >= g["interrupts_expected"] - timers, g
        assert g["interrupts_received"] > 0, g
    assert sum(g["migrations"] for g in guests) == counts["succeeded"]


def test_up_on_a_fleet_the_machine_cannot_keep_up_with_says_overloaded_and_exits_0() -> None:
    """A 4 us guest timer period (the minimum) cannot be kept by any machine: every interrupt comes
    late, the nodes keep answering (health checks, migrations), the summary says OVERLOADED, and
    `up` still exits 0 (the run did what was asked)."""
    proc = subprocess.run(
        [
            *kvmtimer_command(),
            "up",
            "--duration",
            "2",
            "--nodes",
            "2",
            "--guests",
            "2",
            "--period-ticks",
            "100",
            "--interval",
            "0.5",
            "--no-mqtt",
            "--seed",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    assert proc.returncode == 0, proc.stderr
    load = _summary(proc.stdout)["load"]
    assert isinstance(load, dict)
    assert load["timer_period_ticks"] == 100
    assert load["overloaded"] is True and load["mean_lateness_periods"] > 1, load
    assert "OVERLOADED" in proc.stdout


# --- kvmtimer controller + client commands ------------------------------------


@contextlib.contextmanager
def controller_process(args: Sequence[str]) -> Iterator[tuple[subprocess.Popen[str], str]]:
    with kvmtimer_process("controller", ["--listen", "127.0.0.1:0", *args]) as proc:
        record = wait_for_log_event(proc, "controller_listening")
        yield proc, f"127.0.0.1:{record['port']}"


def cli(*args: str, controller: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*kvmtimer_command(), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, KVMTIMER_CONTROLLER=controller),
    )


def cli_json(*args: str, controller: str) -> dict[str, object]:
    done = cli(*args, "--output", "json", controller=controller)
    assert done.returncode == 0, done.stderr
    value = json.loads(done.stdout)
    assert isinstance(value, dict)
    return value


def assert_refused(done: subprocess.CompletedProcess[str], code: str, *words: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert code in done.stderr
    for word in words:
        assert word in done.stderr
    assert "Traceback" not in done.stderr


def test_controller_process_and_client_commands() -> None:
    node_a = ["--node-id", "a", "--ecv", "2", "--vhe", "--api-profile", "VM_COUNTER_OFFSET"]
    node_b = ["--node-id", "b", "--ecv", "0", "--api-profile", "VCPU_OFFSETS", "--counter-base", "123456789"]
    with node_process(node_a) as a, node_process(node_b) as b:
        with controller_process(["--node", f"a={a.address}", "--node", f"b={b.address}"]) as (proc, addr):
            nodes = cli_json("nodes", controller=addr)["nodes"]
            assert isinstance(nodes, list)
            assert [(n["node_id"], n["healthy"], n["api_profile"]) for n in nodes] == [
                ("a", True, "API_PROFILE_VM_COUNTER_OFFSET"),
                ("b", True, "API_PROFILE_VCPU_OFFSETS"),
            ]
            table = cli("nodes", controller=addr)
            assert table.returncode == 0
            assert table.stdout.splitlines()[0].split()[:3] == ["NODE", "ADDRESS", "HEALTH"]

            guest = cli_json(
                "create-guest",
                "--id",
                "g1",
                "--vcpus",
                "2",
                "--node",
                "a",
                "--period-ticks",
                str(PERIOD_TICKS),
                "--ptimer",
                controller=addr,
            )
            assert (guest["guest_id"], guest["node_id"], guest["vcpus"]) == ("g1", "a", 2)
            assert guest["workload"] == {"period_ticks": str(PERIOD_TICKS), "use_ptimer": True}
            assert_refused(cli("create-guest", "--id", "g1", controller=addr), "ALREADY_EXISTS", "g1")

            listed = cli_json("guests", controller=addr)["guests"]
            assert isinstance(listed, list)
            assert [(g["guest_id"], g["node_id"]) for g in listed] == [("g1", "a")]

            # Refusals change nothing and exit 2 with the status on stderr.
            assert_refused(cli("migrate", "g1", "--to", "nowhere", controller=addr), "NOT_FOUND", "nowhere")
            assert_refused(cli("migrate", "g1", "--to", "a", controller=addr), "INVALID_ARGUMENT", "already")
            assert_refused(
                cli("migrate", "g1", "--to", "b", "--method", "VM_COUNTER_OFFSET", controller=addr),
                "FAILED_PRECONDITION",
                "VM_COUNTER_OFFSET",
            )
            assert_refused(cli("migrate", "ghost", controller=addr), "NOT_FOUND", "ghost")

            # g1 uses its physical timer; b runs the 2021 series, which cannot carry it.
            assert_refused(
                cli("migrate", "g1", "--to", "b", controller=addr), "FAILED_PRECONDITION", "physical"
            )
            moved = cli_json(
                "migrate", "g1", "--to", "b", "--id", "m-1", "--allow-state-loss", controller=addr
            )
            assert moved["not_carried"] == ["PTIMER_CTL", "PTIMER_CVAL"]
            assert (moved["migration_id"], moved["source"], moved["destination"]) == ("m-1", "a", "b")
            assert moved["phase"] == "MIGRATION_PHASE_SUCCEEDED"
            assert moved["requested_method"] == "MIGRATION_METHOD_AUTO"
            assert moved["method"] == "MIGRATION_METHOD_VCPU_OFFSETS"
            assert int(str(moved["downtime"])) > 0
            # The same id again is the same migration, not a second move.
            again = cli_json(
                "migrate", "g1", "--to", "b", "--id", "m-1", "--allow-state-loss", controller=addr
            )
            assert (again["migration_id"], again["phase"]) == ("m-1", "MIGRATION_PHASE_SUCCEEDED")

            text = cli(
                "migrate",
                "g1",
                "--to",
                "a",
                "--method",
                "vm_counter_offset",
                "--allow-state-loss",
                controller=addr,
            )
            assert text.returncode == 0, text.stderr
            assert "phase:" in text.stdout and "SUCCEEDED" in text.stdout
            assert "not carried:" in text.stdout and "PTIMER_CTL, PTIMER_CVAL" in text.stdout

            records = cli_json("migrations", controller=addr)["migrations"]
            assert isinstance(records, list)
            assert [(m["source"], m["destination"], m["phase"]) for m in records] == [
                ("a", "b", "MIGRATION_PHASE_SUCCEEDED"),
                ("b", "a", "MIGRATION_PHASE_SUCCEEDED"),
            ]
            assert "m-1" in cli("migrations", "--guest", "g1", controller=addr).stdout

            observed = cli_json("guests", "--observations", controller=addr)["guests"]
            assert isinstance(observed, list)
            [g1] = observed
            assert (g1["node_id"], g1["migrations"]) == ("a", 2)
            vcpus = g1["observations"]["vcpus"]
            assert len(vcpus) == 2
            for vcpu in vcpus:
                assert int(vcpu["min_step_v"]) >= 0 and int(vcpu["min_step_p"]) >= 0
                assert int(vcpu["vtimer_received"]) >= int(vcpu["vtimer_expected"]) - 1

            done = cli("destroy-guest", "g1", controller=addr)
            assert done.returncode == 0, done.stderr
            assert cli_json("guests", controller=addr)["guests"] == []

            proc.send_signal(signal.SIGTERM)
            wait_for_log_event(proc, "controller_stopped")
            assert proc.wait(timeout=15) == 0

        unreachable = cli("nodes", controller=addr)
        assert unreachable.returncode == 3
        assert "UNAVAILABLE" in unreachable.stderr
        assert "Traceback" not in unreachable.stderr
