"""The `kvmtimer` command line: parsing, help, exit codes and the pure parts of `kvmtimer up`.

Edge cases: every subcommand's --help exits 0; a missing or unknown subcommand exits 2;
--node ID=HOST:PORT (repeatable, malformed, missing id); HOST:PORT validation (no port,
port out of range, IPv6); --method is case-insensitive and rejects unknown names;
--controller defaults to $KVMTIMER_CONTROLLER, else 127.0.0.1:7070; `up` defaults and
lower bounds; gRPC status -> exit code table; an unreachable controller gives exit 3
with the status on stderr and no traceback; the node plan of `up` has every feature mix
for any node count >= 3; physical-timer guests are never placed on BY_VALUE nodes;
percentiles (statistics.quantiles); table rendering; the summary's per-method accounting.
"""

from __future__ import annotations

import random

import grpc
import pytest
from kvmtimer.v1 import controller_pb2 as cpb
from kvmtimer.v1 import node_pb2 as pb

from controller.cli import build_parser, client, main, views
from controller.cli.up import scenario, summary
from controller.cli.up.settings import UpSettings
from node.core.features import ApiProfile
from node.runtime.settings import typed

SUBCOMMANDS = (
    "up",
    "node",
    "controller",
    "nodes",
    "guests",
    "migrations",
    "create-guest",
    "destroy-guest",
    "migrate",
)


@pytest.mark.parametrize(
    "argv", [["--help"], *([c, "--help"] for c in SUBCOMMANDS)], ids=lambda a: " ".join(a)
)
def test_help_exits_0(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "usage: kvmtimer" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [[], ["frobnicate"]])
def test_missing_or_unknown_command_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage: kvmtimer" in capsys.readouterr().err


def test_controller_arguments() -> None:
    args = build_parser().parse_args(
        ["controller", "--listen", "0.0.0.0:0", "--node", "a=127.0.0.1:5000", "--node", "b=[::1]:6000"]
    )
    assert args.listen == "0.0.0.0:0"
    assert args.node == [("a", "127.0.0.1:5000"), ("b", "[::1]:6000")]
    assert (args.max_parallel, args.max_outbound, args.health_interval) == (5, 2, 1.0)
    args = build_parser().parse_args(["controller", "--max-parallel", "9", "--max-outbound", "3"])
    assert (args.listen, args.node, args.max_parallel, args.max_outbound) == ("127.0.0.1:7070", [], 9, 3)
    # The names for the same limits (#13): --parallel, --outbound-per-node.
    args = build_parser().parse_args(["controller", "--parallel", "50", "--outbound-per-node", "7"])
    assert (args.max_parallel, args.max_outbound) == (50, 7)


@pytest.mark.parametrize(
    "argv",
    [
        ["controller", "--node", "127.0.0.1:5000"],  # no id
        ["controller", "--node", "=127.0.0.1:5000"],  # empty id
        ["controller", "--node", "a=localhost"],  # no port
        ["controller", "--listen", "127.0.0.1:70000"],  # port out of range
        ["controller", "--max-parallel", "0"],
        ["nodes", "--controller", "nowhere"],
        ["migrate", "g1", "--method", "TELEPORT"],
        ["migrate"],  # GUEST is required
        ["create-guest", "--vcpus", "0"],
        ["up", "--nodes", "1"],
        ["up", "--guests", "0"],
        ["up", "--interval", "0"],
        ["up", "--duration", "-1"],
    ],
    ids=lambda a: " ".join(a),
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "spelling", ["vm_counter_offset", "VM_COUNTER_OFFSET", "MIGRATION_METHOD_VM_COUNTER_OFFSET"]
)
def test_method_is_case_insensitive(spelling: str) -> None:
    args = build_parser().parse_args(["migrate", "g1", "--to", "b", "--method", spelling, "--id", "m1"])
    assert (args.guest, args.to, args.method, args.id) == ("g1", "b", "VM_COUNTER_OFFSET", "m1")
    assert views.method_value(args.method) == cpb.MIGRATION_METHOD_VM_COUNTER_OFFSET


def test_migrate_defaults_to_auto() -> None:
    args = build_parser().parse_args(["migrate", "g1"])
    assert (args.to, args.method, args.id, args.output) == (None, "AUTO", None, "table")
    assert views.method_value(args.method) == cpb.MIGRATION_METHOD_AUTO


def test_controller_address_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(client.ENV_CONTROLLER, raising=False)
    assert build_parser().parse_args(["nodes"]).controller == "127.0.0.1:7070"
    monkeypatch.setenv(client.ENV_CONTROLLER, "10.0.0.7:9000")
    assert build_parser().parse_args(["guests"]).controller == "10.0.0.7:9000"
    # The flag wins over the environment.
    assert build_parser().parse_args(["guests", "--controller", "h:1"]).controller == "h:1"


def test_read_commands_take_output_json() -> None:
    for command in ("nodes", "guests", "migrations", "migrate", "create-guest"):
        argv = [command, "-o", "json"] + (["g1"] if command == "migrate" else [])
        assert build_parser().parse_args(argv).output == "json"


def test_create_guest_arguments() -> None:
    args = build_parser().parse_args(
        ["create-guest", "--id", "g9", "--vcpus", "4", "--node", "n2", "--period-ticks", "250000", "--ptimer"]
    )
    assert (args.id, args.vcpus, args.node, args.period_ticks, args.ptimer) == ("g9", 4, "n2", 250_000, True)


def test_up_defaults() -> None:
    args = build_parser().parse_args(["up"])
    assert (args.duration, args.nodes, args.guests, args.interval, args.record) == (None, 4, 6, 1.0, None)
    args = build_parser().parse_args(
        ["up", "--duration", "6", "--nodes", "3", "--guests", "3", "--interval", "0.3", "--record", "r.jsonl"]
    )
    assert (args.duration, args.nodes, args.guests, args.interval, str(args.record)) == (
        6.0,
        3,
        3,
        0.3,
        "r.jsonl",
    )


@pytest.mark.parametrize(
    ("code", "exit_code"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 2),
        (grpc.StatusCode.NOT_FOUND, 2),
        (grpc.StatusCode.FAILED_PRECONDITION, 2),
        (grpc.StatusCode.ABORTED, 2),
        (grpc.StatusCode.ALREADY_EXISTS, 2),
        (grpc.StatusCode.UNAVAILABLE, 3),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 3),
        (grpc.StatusCode.INTERNAL, 4),
        (grpc.StatusCode.UNKNOWN, 4),
    ],
)
def test_exit_code_table(code: grpc.StatusCode, exit_code: int) -> None:
    assert client.exit_code_for(code) == exit_code


def test_unreachable_controller_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    # Port 1 on loopback: connection refused at once.
    assert main(["nodes", "--controller", "127.0.0.1:1", "--timeout", "5"]) == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("kvmtimer nodes: UNAVAILABLE: ")
    assert "127.0.0.1:1" in captured.err
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("count", range(3, 13))
def test_up_node_plan_mixes_every_feature(count: int) -> None:
    plans = scenario.node_plans(count)
    assert [p.node_id for p in plans] == [f"node-{i}" for i in range(1, count + 1)]
    assert {p.api_profile for p in plans} == set(ApiProfile)
    hardware = {(p.ecv, p.vhe) for p in plans}
    assert {(2, False), (2, True)} <= hardware  # ECV2 nVHE and ECV2 VHE (CNTPOFF)
    assert any(p.ecv == 0 for p in plans)  # non-ECV
    assert len({p.counter_base for p in plans}) == count  # each booted at a different time


def test_up_node_argv() -> None:
    plan = scenario.node_plans(2)[1]
    argv = plan.argv()
    assert argv[:3] == ["node", "--listen", "127.0.0.1:0"]
    parsed = build_parser().parse_args(argv)
    assert (parsed.node_id, parsed.ecv, parsed.vhe, parsed.api_profile, parsed.clock, parsed.cntfrq) == (
        "node-2",
        2,
        True,
        "VCPU_OFFSETS",
        "realtime",
        25_000_000,
    )
    assert parsed.counter_base == plan.counter_base


def test_up_skew_gives_the_nodes_alternating_realtime_skews() -> None:
    plans = scenario.node_plans(5, 40_000)
    assert [p.skew_ns for p in plans] == [0, 40_000, -40_000, 80_000, -80_000]
    assert [p.skew_ns for p in scenario.node_plans(3)] == [0, 0, 0]
    assert "--realtime-skew-ns" not in plans[0].argv()
    parsed = build_parser().parse_args(plans[4].argv())
    assert parsed.realtime_skew_ns == -80_000
    args = build_parser().parse_args(["up", "--skew", "1000"])
    assert args.skew == 1000


def test_up_guests_use_ptimer_only_where_it_can_move() -> None:
    nodes = scenario.node_plans(4)
    guests = scenario.guest_plans(12, nodes, random.Random(7))
    by_node = {n.node_id: n for n in nodes}
    assert all(1 <= g.vcpus <= 4 for g in guests)
    assert any(g.use_ptimer for g in guests)
    for g in guests:
        if g.use_ptimer:
            assert by_node[g.node_id].api_profile is not ApiProfile.BY_VALUE


def test_percentile_by_statistics_quantiles() -> None:
    assert views.percentile([], 0.5) is None
    assert views.percentile([3.0], 0.99) == 3.0
    values = [float(v) for v in range(1, 101)]
    assert views.percentile(values, 0.5) == 50.5  # halfway between the 50th and 51st values
    assert views.percentile(values, 0.99) == pytest.approx(99.01)
    assert views.percentile(list(reversed(values)), 1.0) == 100.0
    assert views.percentile(values, 0.0) == 1.0
    assert views.percentile([2.0, 4.0], 0.5) == 3.0


def test_table_right_aligns_numbers_when_asked() -> None:
    text = views.table(("NAME", "MS"), [("a", 7), ("bb", 1234)], numbers_right=True)
    assert text.split("\n") == ["NAME    MS", "a        7", "bb    1234"]


def test_table_pads_columns_and_marks_empty_cells() -> None:
    text = views.table(("A", "LONG HEADER"), [("xyz", ""), ("", 7)])
    assert text.split("\n") == ["A    LONG HEADER", "xyz  -", "-    7"]


def _migration(
    mid: str, method: int, phase: int, downtime_us: int, error: int | None, guest: str = "g1"
) -> cpb.Migration:
    m = cpb.Migration(
        migration_id=mid,
        guest_id=guest,
        source="a",
        destination="b",
        method=method,  # type: ignore[arg-type]
        phase=phase,  # type: ignore[arg-type]
        downtime=downtime_us,
    )
    if error is not None:
        m.counter_error_ticks = error
    return m


def test_summary_accounting() -> None:
    settings = typed(UpSettings, build_parser().parse_args(["up"]))
    demo = scenario.Demo(settings, False, None, "127.0.0.1:1", random.Random(0))  # type: ignore[arg-type]
    demo.refusals.append(scenario.Refusal("g2", "c", "FAILED_PRECONDITION", "physical timer"))
    ok, failed = cpb.MIGRATION_PHASE_SUCCEEDED, cpb.MIGRATION_PHASE_FAILED
    migrations = [
        _migration("m1", cpb.MIGRATION_METHOD_VM_COUNTER_OFFSET, ok, 2_000, -3),
        _migration("m2", cpb.MIGRATION_METHOD_VM_COUNTER_OFFSET, ok, 4_000, 5),
        _migration("m3", cpb.MIGRATION_METHOD_BY_VALUE, ok, 10_000, -250_000),
        _migration("m4", cpb.MIGRATION_METHOD_VCPU_OFFSETS, failed, 0, None),
        _migration("m5", cpb.MIGRATION_METHOD_VCPU_OFFSETS, cpb.MIGRATION_PHASE_RUNNING, 0, None),
    ]
    # m3 moved a ptimer guest to a 5.15 host (allow_state_loss); m2 lost nothing the guest uses.
    migrations[2].guest_uses_ptimer = True
    migrations[2].not_carried.extend(["PTIMER_CTL", "PTIMER_CVAL", "PTIMER_CNT"])
    migrations[1].not_carried.extend(["PTIMER_CTL"])
    obs = pb.GuestObservations(
        vcpus=[
            pb.VcpuObservations(
                vcpu_index=0, min_step_v=12, min_step_p=9, vtimer_received=10, vtimer_expected=10
            ),
            pb.VcpuObservations(vcpu_index=1, min_step_v=4, vtimer_received=9, vtimer_expected=10),
        ]
    )
    guest = cpb.Guest(guest_id="g1", node_id="b", vcpus=2, migrations=3, observations=obs)
    result = summary.build_summary(demo, migrations, [guest], {"a": (10, 0), "b": (11, 0)})
    assert result["migrations"] == {"succeeded": 3, "failed": 1, "refused": 1}
    assert result["by_method"] == {
        "BY_VALUE": {
            "succeeded": 1,
            "failed": 0,
            "downtime_ms_p50": 10.0,
            "downtime_ms_p99": 10.0,
            "max_abs_counter_error_ticks": 250_000,
        },
        "VCPU_OFFSETS": {
            "succeeded": 0,
            "failed": 1,
            "downtime_ms_p50": None,
            "downtime_ms_p99": None,
            "max_abs_counter_error_ticks": None,
        },
        "VM_COUNTER_OFFSET": {
            "succeeded": 2,
            "failed": 0,
            "downtime_ms_p50": 3.0,
            "downtime_ms_p99": 3.98,
            "max_abs_counter_error_ticks": 5,
        },
    }
    assert result["refused_by_method"] == {"AUTO": 1}
    assert result["refused_by_code"] == {"FAILED_PRECONDITION": 1}
    assert result["max_abs_counter_error_ticks"] == {"offset_methods": 5, "by_value": 250_000}
    assert result["downtime_ms"] == {"p50": 4.0, "p99": 9.88, "max": 10.0}
    rows = result["guests"]
    assert isinstance(rows, list) and len(rows) == 1
    row = rows[0]
    assert row["min_step"] == 4
    assert (row["interrupts_received"], row["interrupts_expected"], row["max_timer_shortfall"]) == (19, 20, 1)
    assert result["all_min_steps_non_negative"] is True
    assert result["node_processes_stopped"] is True
    assert result["moved_with_state_loss"] == [
        {"migration_id": "m3", "guest_id": "g1", "not_carried": ["PTIMER_CTL", "PTIMER_CVAL", "PTIMER_CNT"]}
    ]
    assert views.state_lost(migrations[2]) == "PTIMER_CTL, PTIMER_CVAL, PTIMER_CNT"
    assert views.state_lost(migrations[1]) == ""
    text = summary.summary_text(result)
    assert "1 move(s) lost a guest's physical timer" in text and "g1 (m3)" in text
    assert "3 succeeded, 1 failed, 1 refused" in text
    assert "BY_VALUE 250000 ticks" in text
    # One interrupt short with no lateness recorded is within 1 period; nothing overloaded.
    assert result["load"] == {
        "timer_period_ticks": scenario.PERIOD_TICKS,
        "mean_lateness_ticks": 0.0,
        "mean_lateness_periods": 0.0,
        "max_lateness_ticks": 0,
        "max_lateness_periods": 0.0,
        "guests_missing_interrupts": 0,
        "overloaded": False,
        "retried_calls": {},
    }
    assert "OVERLOADED" not in text


def test_summary_reports_overload_and_ignores_physical_timers_lost_by_design() -> None:
    settings = typed(UpSettings, build_parser().parse_args(["up"]))
    demo = scenario.Demo(settings, False, None, "127.0.0.1:1", random.Random(0))  # type: ignore[arg-type]
    demo.period_ticks = 1000
    demo.retrier.retried["DEADLINE_EXCEEDED"] += 2
    lossy = _migration("m1", cpb.MIGRATION_METHOD_BY_VALUE, cpb.MIGRATION_PHASE_SUCCEEDED, 1_000, -25)
    lossy.guest_id = "g1"
    lossy.not_carried.extend(["PTIMER_CTL", "PTIMER_CVAL"])
    lost_ptimer = pb.VcpuObservations(
        vcpu_index=0, vtimer_received=10, vtimer_expected=10, ptimer_received=3, ptimer_expected=10
    )
    g1 = cpb.Guest(
        guest_id="g1", node_id="b", vcpus=1, observations=pb.GuestObservations(vcpus=[lost_ptimer])
    )
    late = pb.VcpuObservations(vcpu_index=0, vtimer_received=4, vtimer_expected=10, max_lateness_ticks=600)
    g2 = cpb.Guest(guest_id="g2", node_id="a", vcpus=1, observations=pb.GuestObservations(vcpus=[late]))
    result = summary.build_summary(demo, [lossy], [g1, g2], {})
    load = result["load"]
    assert isinstance(load, dict)
    assert (load["guests_missing_interrupts"], load["overloaded"], load["max_lateness_periods"]) == (
        1,
        True,
        0.6,
    )
    assert load["retried_calls"] == {"DEADLINE_EXCEEDED": 2}
    text = summary.summary_text(result)
    assert "OVERLOADED" in text and "1 guest(s) missing interrupts" in text
    assert "DEADLINE_EXCEEDED x2" in text


def _late_guest(guest_id: str, received: int, worst: int, total: int) -> cpb.Guest:
    o = pb.VcpuObservations(
        vcpu_index=0,
        vtimer_received=received,
        vtimer_expected=received,
        max_lateness_ticks=worst,
        total_lateness_ticks=total,
    )
    return cpb.Guest(guest_id=guest_id, node_id="a", vcpus=1, observations=pb.GuestObservations(vcpus=[o]))


def test_summary_overload_is_sustained_lateness_not_one_stall() -> None:
    """One stall of 3 periods (a migration landing on a busy node) in an otherwise punctual run is
    not an overload; interrupts late by more than half a period on average are, with nothing
    missing."""
    settings = typed(UpSettings, build_parser().parse_args(["up"]))
    demo = scenario.Demo(settings, False, None, "127.0.0.1:1", random.Random(0))  # type: ignore[arg-type]
    demo.period_ticks = 1000
    # 200 deadlines, 1 ms late each, except one stall of 3000 ticks (it covered 3 deadlines).
    stalled = _late_guest("g1", 200, 3000, 197 * 25 + 3000 + 2000 + 1000)
    punctual = _late_guest("g2", 200, 40, 200 * 20)
    result = summary.build_summary(demo, [], [stalled, punctual], {})
    load = result["load"]
    assert isinstance(load, dict)
    assert load["max_lateness_periods"] == 3.0
    assert load["mean_lateness_ticks"] == pytest.approx((197 * 25 + 6000 + 4000) / 400, abs=0.1)
    assert (load["guests_missing_interrupts"], load["overloaded"]) == (0, False)
    assert "OVERLOADED" not in summary.summary_text(result)
    # Interrupts 0.6 periods late on average: the host cycles slower than the period.
    behind = _late_guest("g3", 200, 1200, 200 * 600)
    result = summary.build_summary(demo, [], [behind], {})
    load = result["load"]
    assert isinstance(load, dict)
    assert (load["mean_lateness_periods"], load["overloaded"]) == (0.6, True)
    text = summary.summary_text(result)
    assert "OVERLOADED" in text and "lateness mean 0.02 ms (0.6 periods)" in text
    # A third of a period: late, shown, but keeping up.
    result = summary.build_summary(demo, [], [_late_guest("g4", 200, 700, 200 * 333)], {})
    assert "lateness mean 0.01 ms (0.333 periods)" in summary.summary_text(result)
    assert "OVERLOADED" not in summary.summary_text(result)


def test_summary_judges_the_load_after_the_start_up() -> None:
    """A start-up stall (guests created in a burst, processes warming up) left 100 deadlines 2
    periods late on average; the 200 deadlines since the migrating started were punctual."""
    settings = typed(UpSettings, build_parser().parse_args(["up"]))
    demo = scenario.Demo(settings, False, None, "127.0.0.1:1", random.Random(0))  # type: ignore[arg-type]
    demo.period_ticks = 1000
    start = _late_guest("g1", 100, 5000, 100 * 2000)
    end = _late_guest("g1", 300, 5000, 100 * 2000 + 200 * 30)
    whole_run = summary.build_summary(demo, [], [end], {})["load"]
    assert isinstance(whole_run, dict) and whole_run["overloaded"] is True
    demo.lateness_baseline = summary.lateness_by_guest([start])
    assert demo.lateness_baseline == {"g1": (100, 200_000)}
    load = summary.build_summary(demo, [], [end], {})["load"]
    assert isinstance(load, dict)
    assert (load["mean_lateness_ticks"], load["overloaded"]) == (30.0, False)
    assert load["max_lateness_ticks"] == 5000  # the worst single interrupt is still shown


def test_summary_shows_mqtt_drops_by_reason() -> None:
    settings = typed(UpSettings, build_parser().parse_args(["up"]))
    demo = scenario.Demo(settings, False, None, "127.0.0.1:1", random.Random(0))  # type: ignore[arg-type]
    result = summary.build_summary(demo, [], [], {})
    assert "MQTT telemetry" not in summary.summary_text(result)
    result["telemetry"] = {
        "mqtt": {
            "published": 900,
            "dropped": 7,
            "dropped_by_reason": {"queue_full": 5, "hub_items": 2, "disconnected": 0},
            "samples": 12000,
        },
        "record": None,
    }
    text = summary.summary_text(result)
    assert "MQTT telemetry: 900 messages published (12000 vCPU samples), 7 dropped" in text
    assert "(queue_full x5, hub_items x2)" in text


def test_summary_counts_only_kept_timers_of_a_guest_whose_physical_timer_was_lost() -> None:
    settings = typed(UpSettings, build_parser().parse_args(["up"]))
    demo = scenario.Demo(settings, False, None, "127.0.0.1:1", random.Random(0))  # type: ignore[arg-type]
    lossy = _migration("m1", cpb.MIGRATION_METHOD_BY_VALUE, cpb.MIGRATION_PHASE_SUCCEEDED, 1_000, -25)
    lossy.guest_id = "g1"
    lossy.not_carried.extend(["PTIMER_CTL", "PTIMER_CVAL", "PTIMER_CNT"])
    # The other host's physical counter is far ahead of the guest's first deadline.
    o = pb.VcpuObservations(
        vcpu_index=0, vtimer_received=50, vtimer_expected=50, ptimer_received=20, ptimer_expected=73_440_433
    )
    g1 = cpb.Guest(guest_id="g1", node_id="b", vcpus=1, observations=pb.GuestObservations(vcpus=[o]))
    rows = summary.build_summary(demo, [lossy], [g1], {})["guests"]
    assert isinstance(rows, list)
    assert (rows[0]["interrupts_received"], rows[0]["interrupts_expected"]) == (50, 50)


def test_summary_physical_counter_reset_by_value_is_not_a_backwards_clock() -> None:
    settings = typed(UpSettings, build_parser().parse_args(["up"]))
    demo = scenario.Demo(settings, False, None, "127.0.0.1:1", random.Random(0))  # type: ignore[arg-type]
    moved = _migration("m1", cpb.MIGRATION_METHOD_BY_VALUE, cpb.MIGRATION_PHASE_SUCCEEDED, 1_000, -25)
    moved.guest_id = "g1"
    reset = pb.VcpuObservations(vcpu_index=0, min_step_v=10, min_step_p=-(10**13))
    g1 = cpb.Guest(guest_id="g1", node_id="b", vcpus=1, observations=pb.GuestObservations(vcpus=[reset]))
    result = summary.build_summary(demo, [moved], [g1], {})
    assert result["physical_counter_reset_by_value"] == ["g1"]
    assert result["all_min_steps_non_negative"] is True
    assert "restarted lower: g1" in summary.summary_text(result)
    # Not moved by value: a physical counter going back is a backwards clock.
    g2 = cpb.Guest(guest_id="g2", node_id="b", vcpus=1, observations=pb.GuestObservations(vcpus=[reset]))
    result = summary.build_summary(demo, [moved], [g2], {})
    assert (result["physical_counter_reset_by_value"], result["all_min_steps_non_negative"]) == ([], False)
    assert "COUNTER WENT BACKWARDS" in summary.summary_text(result)
    # Moved by value, but the virtual counter went back: still a backwards clock.
    bad = pb.VcpuObservations(vcpu_index=0, min_step_v=-1, min_step_p=-(10**13))
    g1 = cpb.Guest(guest_id="g1", node_id="b", vcpus=1, observations=pb.GuestObservations(vcpus=[bad]))
    result = summary.build_summary(demo, [moved], [g1], {})
    assert (result["physical_counter_reset_by_value"], result["all_min_steps_non_negative"]) == ([], False)
