"""The fleet's pure parts: the host mix, `up`'s sizing of the guest timer period, the fleet
command line and the start-up progress text.

Edge cases: any 3 consecutive hosts cover every kernel API and ECV2 nVHE / ECV2 VHE / non-ECV
appear within 4; index 0 is refused; `up`'s node plans are the fleet's hosts; the period is
10 ms for a small cluster, grows with the number of timers beyond the interrupt budget, is a
multiple of 10 ms and never exceeds 10 s; a fleet process serves consecutive hosts only; the
ETA appears only once something is done and not at the end; the non-terminal progress
prints once per 10 %.
"""

from __future__ import annotations

import io

import pytest

from controller.cli import build_parser
from controller.cli.up import launch, scenario
from controller.cli.up.retry import Progress, eta_text
from node.core.features import ApiProfile, EcvLevel
from node.core.fleet import fleet_host


@pytest.mark.parametrize("start", range(1, 8))
def test_any_three_consecutive_hosts_have_every_api(start: int) -> None:
    hosts = [fleet_host(i) for i in range(start, start + 4)]
    assert {h.features.api_profile for h in hosts[:3]} == set(ApiProfile)
    hardware = {(h.features.ecv, h.features.vhe) for h in hosts}
    assert {(EcvLevel.CNTPOFF, False), (EcvLevel.CNTPOFF, True)} <= hardware
    assert any(h.features.ecv is EcvLevel.NI for h in hosts)
    assert len({h.counter_base for h in hosts}) == 4


def test_host_index_starts_at_one() -> None:
    with pytest.raises(ValueError):
        fleet_host(0)
    assert fleet_host(7, "edge-").node_id == "edge-7"


def test_up_plans_are_the_fleet_hosts() -> None:
    for plan in scenario.node_plans(12):
        host = fleet_host(int(plan.node_id.removeprefix("node-")))
        assert (plan.ecv, plan.vhe, plan.api_profile, plan.counter_base) == (
            int(host.features.ecv),
            host.features.vhe,
            host.features.api_profile,
            host.counter_base,
        )


@pytest.mark.parametrize(
    ("timers", "period"),
    [
        (1, 250_000),
        (20, 250_000),  # 20 timers at 100 Hz = the budget's 1 %
        (2_000 * 250_000 // 25_000_000, 250_000),  # exactly the budget at 10 ms
        (21, 500_000),  # just over: 20 ms
        (100, 1_250_000),  # 100 timers / 2000 Hz = 50 ms
        (3_750, 47_000_000),  # 1000 guests: 1.875 s, rounded up to 10 ms
        (10**7, 250_000_000),  # capped at 10 s
    ],
)
def test_period_sized_to_the_fleet(timers: int, period: int) -> None:
    assert scenario.default_period_ticks(timers) == period
    assert period % scenario.PERIOD_TICKS == 0


def test_fleet_argv_serves_consecutive_hosts() -> None:
    plans = scenario.node_plans(30)
    argv = launch.fleet_argv(plans[25:30])
    assert argv == ["fleet", "--hosts", "5", "--first-index", "26", "--clock", "realtime"]
    parsed = build_parser().parse_args(argv)
    assert (parsed.hosts, parsed.first_index, parsed.clock) == (5, 26, "realtime")
    with pytest.raises(ValueError):
        launch.fleet_argv([plans[0], plans[2]])


def test_eta_text() -> None:
    assert eta_text(0, 10, 1.0) == "0/10 in 1.0 s"
    assert eta_text(5, 10, 2.0) == "5/10 in 2.0 s, ETA 2 s"
    assert eta_text(10, 10, 4.0) == "10/10 in 4.0 s"


def test_progress_prints_every_tenth_off_a_terminal() -> None:
    out = io.StringIO()
    progress = Progress("guests created", 20, tty=False, out=out)
    for _ in range(20):
        progress.advance()
    progress.finish()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10
    assert lines[-1].startswith("  guests created: 20/20 in ")
