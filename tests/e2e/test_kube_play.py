"""`podman kube play` on the rendered controller manifests: what podman supports of them, for real.

Needs podman and the built image (see tests/e2e/test_image.py); skipped, saying which, otherwise.

Played: the controller Deployment and its settings ConfigMap (`kvmtimer-config`) of the rendered
default overlay, with the image pointed at the local build (and the Deployment's name made unique
to this test run). podman then applies what the
Deployment says: the settings file mounted from the ConfigMap, the KVMTIMER_* environment
(KVMTIMER_TOKEN_FILE and KVMTIMER_MQTT_FILE included), the pod's UID/GID 10001, the read-only root
filesystem, no capabilities, no privilege escalation. Covers: the container runs with exactly
that (checked from /proc inside it), its state file is on the named volume podman made of the
PersistentVolumeClaim, it loads the mounted settings and token file (it logs
`controller_listening` with security `mtls+token`), and answers SERVING on the plaintext probe
port (7071) while the mTLS port refuses a client without a certificate.

What podman 4.3 (Debian 12) does not support, and the test therefore leaves out or replaces:
* StatefulSet (the node pools), Service, NetworkPolicy and Namespace kinds: not played;
* gRPC readiness/liveness probes: ignored (podman runs exec/HTTP/TCP probes only);
* Secret volumes: podman writes Secret `data` values still base64-encoded into the files (and
  ignores `stringData`), so the three Secret volumes (TLS, token, MQTT URL) are replaced by
  hostPath volumes holding the same files; a secret volume without an explicit `optional`
  crashes podman 4.3 (nil pointer), which is why the manifests spell `optional: false`.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.test_image import IMAGE, ROOT, Podman, secret_dir, tls_files
from tests.e2e.test_image import podman as podman  # the fixture
from tests.support.kustomize import render
from tests.support.nodes import kvmtimer_command

pytestmark = pytest.mark.e2e

PLAYED = {
    ("Deployment", "kvmtimer-controller"),
    ("ConfigMap", "kvmtimer-config"),
    ("PersistentVolumeClaim", "kvmtimer-controller-state"),
}
UNSUPPORTED_KINDS = {"StatefulSet", "Service", "NetworkPolicy", "Namespace"}
HEALTH_CHECK = """
import grpc, sys
from grpc_health.v1 import health_pb2, health_pb2_grpc
with grpc.insecure_channel(sys.argv[1]) as channel:
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        print(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    except grpc.RpcError as err:
        print(err.code().name)
"""


def deployment_name() -> str:
    return f"kvmtimer-controller-{os.getpid()}"


def state_volume_name() -> str:
    """The controller state's claim: podman makes it a named volume that `kube down` keeps."""
    return f"kvmtimer-controller-state-{os.getpid()}"


def playable(tmp_path: Path) -> list[dict[str, Any]]:
    """The controller's objects as podman 4.3 can play them (see the module docstring)."""
    objs = render(ROOT / "deploy" / "kubernetes" / "overlays" / "default")
    # A new kind in the manifests must be sorted into played or unsupported here.
    assert {o["kind"] for o in objs} == UNSUPPORTED_KINDS | {k for k, _ in PLAYED}
    played = [o for o in objs if (o["kind"], o["metadata"]["name"]) in PLAYED]
    pki = tmp_path / "pki"
    made = subprocess.run(
        [*kvmtimer_command(), "certs", "--out", str(pki)], capture_output=True, text=True, timeout=60
    )
    assert made.returncode == 0, made.stderr
    files: dict[str, dict[str, Path | str]] = {
        "kvmtimer-controller-tls": tls_files(pki, "controller"),
        "kvmtimer-token": {"token": "kube-play-token\n"},
        "kvmtimer-mqtt": {"url": ""},  # empty: no MQTT
    }
    for obj in played:
        if obj["kind"] == "PersistentVolumeClaim":
            obj["metadata"]["name"] = state_volume_name()  # unique per run, removed at the end
        if obj["kind"] != "Deployment":
            continue
        obj["metadata"]["name"] = deployment_name()  # its pod's name; unique for parallel runs
        spec = obj["spec"]["template"]["spec"]
        spec["containers"][0]["image"] = IMAGE
        for volume in spec["volumes"]:
            if "persistentVolumeClaim" in volume:
                volume["persistentVolumeClaim"]["claimName"] = state_volume_name()
            if "secret" in volume:
                secret = volume.pop("secret")["secretName"]
                directory = secret_dir(tmp_path, secret, files.pop(secret))
                volume["hostPath"] = {"path": str(directory), "type": "Directory"}
    assert not files, f"the Deployment no longer mounts {sorted(files)}"
    return played


def test_kube_play_runs_the_controller_deployment(podman: Podman, tmp_path: Path) -> None:
    manifest = tmp_path / "controller.yaml"
    manifest.write_text(yaml.safe_dump_all(playable(tmp_path)))
    played = podman.run("kube", "play", str(manifest), timeout=300)
    try:
        pods = json.loads(
            podman.run("pod", "ps", "--format=json", f"--filter=name={deployment_name()}").stdout
        )
        assert len(pods) == 1, pods
        (container,) = [c["Names"] for c in pods[0]["Containers"] if not c["Names"].endswith("-infra")]
        deadline = time.monotonic() + 60
        while True:
            logs = podman.run("logs", container, check=False).stderr
            listening = [json.loads(line) for line in logs.splitlines() if '"controller_listening"' in line]
            if listening:
                break
            assert time.monotonic() < deadline, f"no controller_listening:\n{logs[-3000:]}\n{played.stdout}"
            time.sleep(0.5)
        assert listening[0]["security"] == "mtls+token" and listening[0]["health_port"] == 7071

        status = podman.run("exec", container, "cat", "/proc/1/status").stdout
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        assert fields["Uid"].split()[:2] == ["10001", "10001"] and fields["Gid"].split()[:2] == [
            "10001",
            "10001",
        ]
        assert int(fields["CapEff"], 16) == 0 and fields["NoNewPrivs"].strip() == "1"
        inspect = json.loads(podman.run("inspect", container).stdout)[0]
        assert inspect["HostConfig"]["ReadonlyRootfs"] is True
        # The claim became a named volume on the state directory, and the state file is on it.
        mounts = {m["Destination"]: m for m in inspect["Mounts"]}
        state = mounts["/var/lib/kvmtimer"]
        assert (state["Type"], state["Name"], state["RW"]) == ("volume", state_volume_name(), True), state
        podman.run("exec", container, "test", "-s", "/var/lib/kvmtimer/state.db")
        wrote = podman.run("exec", container, "touch", "/opt/x", check=False)
        assert "Read-only file system" in wrote.stderr

        def health(port: int) -> str:
            done = podman.run("exec", container, "python3", "-c", HEALTH_CHECK, f"127.0.0.1:{port}")
            return done.stdout.strip()

        assert health(7071) == "SERVING"
        assert health(7070) == "UNAVAILABLE"  # mutual TLS: no certificate, no handshake
    finally:
        podman.run("kube", "down", str(manifest), check=False, timeout=120)
        podman.run("volume", "rm", "--force", state_volume_name(), check=False, timeout=60)
