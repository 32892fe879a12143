"""The operator-facing monitoring files in deploy/monitoring/.

Covers: `promtool check rules` accepts the alert rules and `promtool test rules` runs their unit
tests (each alert fires on its input series and stays quiet otherwise); the Grafana dashboard is
well-formed (unique panel ids, a Prometheus datasource variable on every query, no overlapping
panels) and shows what operators need (migrations by method/outcome, downtime and counter-error
histograms, guest lateness, nodes up, telemetry drops); every metric named by a dashboard query
or an alert exists in what node and controller export (their collectors' families, including
the per-RPC gRPC metrics). tests/e2e/test_prometheus.py also has a real Prometheus evaluate them.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from controller.service.cluster import Cluster
from controller.telemetry.metrics import controller_registry
from node.core.clock import ManualClock
from node.core.features import ClockMode, HostFeatures
from node.core.host import Host
from node.runtime.grpc_metrics import GrpcServerMetrics
from node.service.guest_metrics import GuestMetrics
from node.service.metrics import node_registry
from node.service.telemetry import TelemetryStreams
from tests.support.outside import require_tool

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
DASHBOARD = MONITORING / "kvmtimer-dashboard.json"
ALERTS = MONITORING / "kvmtimer-alerts.yaml"
ALERT_TESTS = MONITORING / "kvmtimer-alerts-test.yaml"
# PromQL words that look like metric names but are not
PROMQL_WORDS = {
    "sum", "avg", "max", "min", "count", "by", "without", "rate", "increase", "irate", "histogram_quantile",
    "absent", "le", "and", "or", "unless", "on", "ignoring", "group_left", "group_right", "bool", "offset",
}  # fmt: skip
IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_queries() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] if p["type"] != "row" for t in p["targets"]]


def alert_queries() -> list[str]:
    return [r["expr"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def metric_names(expr: str) -> set[str]:
    """Identifiers of `expr` that name series: not functions, keywords, label names or strings."""
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "{}", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "[]", expr)  # ranges ($__rate_interval)
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r"\boffset\s+\w+", "", expr)  # offset durations
    return {w for w in IDENT.findall(expr) if w not in PROMQL_WORDS and not w.startswith("$")}


def exported_names() -> set[str]:
    """Every sample name node and controller processes can export (families without samples too)."""
    host = Host("n1", HostFeatures(), ManualClock(), counter_base=0, clock_mode=ClockMode.SIMULATED)
    registries = [
        GrpcServerMetrics().register(GuestMetrics(host).register(node_registry(host, TelemetryStreams()))),
        controller_registry(Cluster(health_interval_s=0)),
    ]
    names: set[str] = set()
    for registry in registries:
        for family in text_string_to_metric_families(generate_latest(registry).decode()):
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(
                family.type, [""]
            )
            names |= {family.name + s for s in suffixes}
    return names


def test_alert_rules_pass_promtool_check_and_unit_tests() -> None:
    promtool = require_tool("promtool")
    checked = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0 and "SUCCESS: 4 rules found" in checked.stdout, (
        checked.stdout + checked.stderr
    )
    tested = subprocess.run(
        [promtool, "test", "rules", ALERT_TESTS.name],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=MONITORING,
    )
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    alerts = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    tests = ALERT_TESTS.read_text()
    assert all(f"alertname: {a}" in tests for a in alerts)  # every alert has a unit test


def test_dashboard_is_well_formed_and_covers_the_operator_views() -> None:
    board = dashboard()
    assert board["uid"] == "kvmtimer-overview" and board["title"] == "kvmtimer"
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        assert g["x"] + g["w"] <= 24
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert p["targets"] and all(t["datasource"] == p["datasource"] and t["expr"] for t in p["targets"])
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource"]
    queries = "\n".join(dashboard_queries())
    for needed in (
        "sum by (method, outcome) (rate(kvmtimer_migrations_total",
        "kvmtimer_migration_downtime_seconds_bucket",
        "kvmtimer_migration_counter_error_ticks_bucket",
        "kvmtimer_node_guest_lateness_max_seconds",
        "kvmtimer_controller_nodes_up",
        "kvmtimer_controller_telemetry_dropped_total",
        "kvmtimer_node_telemetry_dropped_samples_total",
        "grpc_server_handled_total",
    ):
        assert needed in queries, needed


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_queries_name_metrics_that_exist(source: str) -> None:
    queries = dashboard_queries() if source == "dashboard" else alert_queries()
    named = set().union(*(metric_names(q) for q in queries))
    assert named, "no metric names found: the parser is broken"
    missing = named - exported_names()
    assert not missing, f"{source} queries name metrics nobody exports: {sorted(missing)}"


def test_metric_name_parser() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (le, method) (rate(a_bucket{method!="by_value",le="1.0"}[5m])))'
        " / ignoring(x) b_total offset 5m > 0 and absent(c)"
    ) == {"a_bucket", "b_total", "c"}


def test_exported_names_include_histograms_and_counters() -> None:
    names = exported_names()
    assert {"kvmtimer_migrations_total", "kvmtimer_migration_downtime_seconds_bucket"} <= names
    assert {"grpc_server_handled_total", "grpc_server_handling_seconds_bucket", "kvmtimer_node_vms"} <= names
    assert "kvmtimer_nonexistent_total" not in names
