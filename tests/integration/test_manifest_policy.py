"""checkov (a policy scanner this project did not write) on the rendered Kubernetes manifests.

Every overlay is rendered (tests/support/kustomize.py) and scanned with checkov's Kubernetes
checks. A finding either gets fixed in deploy/kubernetes or is listed in JUSTIFIED with the
reason; the test fails on any other finding and on a justification that no longer matches a
finding (so the list cannot go stale). Fixed so far: Secrets as mounted files instead of
environment variables (CKV_K8S_35: --token-file, --mqtt-file), the broker's UID above 10000
(CKV_K8S_40).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.kustomize import render
from tests.support.outside import require_tool

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = sorted(
    p.parent.name for p in (ROOT / "deploy" / "kubernetes" / "overlays").glob("*/kustomization.yaml")
)

# Why the image reference is a tag: the digest exists only once the user has pushed the image
# to their registry (README: `kustomize edit set image kvmtimer=REGISTRY/kvmtimer@sha256:...`);
# the broker's official image is pinned by version tag, and its digest differs per registry
# mirror. Pin digests at deploy time.
DIGEST = (
    "image pinned by digest at deploy time (kustomize edit set image ...@sha256:...), not in the repository"
)
# Why IfNotPresent: with images pinned by version (or digest at deploy time), Always only adds a
# registry round trip to every pod start and makes restarts fail during a registry outage.
PULL = "IfNotPresent with immutable tags or digests; Always makes every restart depend on the registry"
KVMTIMER_WORKLOADS = {
    "default": [
        "Deployment.kvmtimer-controller",
        "StatefulSet.kvmtimer-node-ecv",
        "StatefulSet.kvmtimer-node-noecv",
        "StatefulSet.kvmtimer-node-legacy",
    ],
    "ecv-only": ["Deployment.kvmtimer-controller", "StatefulSet.kvmtimer-node-ecv"],
}
JUSTIFIED = {
    overlay: {
        (check, resource): reason
        for resource in [*workloads, "Deployment.kvmtimer-mqtt"]
        for check, reason in (("CKV_K8S_43", DIGEST), ("CKV_K8S_15", PULL))
    }
    for overlay, workloads in KVMTIMER_WORKLOADS.items()
}


def findings(overlay: str, tmp_path: Path) -> set[tuple[str, str]]:
    """(check id, Kind.name) of every failed checkov check."""
    checkov = require_tool("checkov")
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(yaml.safe_dump_all(render(ROOT / "deploy" / "kubernetes" / "overlays" / overlay)))
    done = subprocess.run(
        [
            checkov,
            "--file",
            str(rendered),
            "--framework",
            "kubernetes",
            "--output",
            "json",
            "--quiet",
            "--compact",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode in (0, 1), done.stderr  # 1: some check failed
    report = json.loads(done.stdout)
    reports = report if isinstance(report, list) else [report]
    assert all(r["summary"]["parsing_errors"] == 0 for r in reports)
    assert sum(r["summary"]["passed"] for r in reports) > 100  # checkov really looked at the objects
    out = set()
    for r in reports:
        for failed in r["results"]["failed_checks"]:
            kind, _namespace, name = failed["resource"].split(".", 2)
            out.add((failed["check_id"], f"{kind}.{name}"))
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_checkov_findings_are_fixed_or_justified(overlay: str, tmp_path: Path) -> None:
    assert set(OVERLAYS) == set(JUSTIFIED)
    found = findings(overlay, tmp_path)
    unjustified = found - set(JUSTIFIED[overlay])
    assert not unjustified, f"fix these or justify them in JUSTIFIED: {sorted(unjustified)}"
    stale = set(JUSTIFIED[overlay]) - found
    assert not stale, f"no longer found, remove the justification: {sorted(stale)}"
