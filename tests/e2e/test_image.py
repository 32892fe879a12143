"""The built image, run for real with podman: a controller and one node per hardware pool.

Needs podman and the image deploy/build-image.sh builds (.ci/test builds it when podman can be
installed; KVMTIMER_IMAGE names another tag); skipped, saying which, otherwise.

Set-up, as on Kubernetes: a private podman network whose DNS (aardvark-dns) is the cluster DNS;
three node containers configured by the pools' own settings from the rendered manifests (ECV,
non-ECV, legacy) behind one network alias, `kvmtimer-node`; the controller discovers them
through the A records of that name (`KVMTIMER_DISCOVER_DNS=kvmtimer-node:7000`); mutual TLS with
the certificates of `kvmtimer certs` and the bearer token, mounted read-only like Secrets
(owner 10001, mode 0440) and read from files (`KVMTIMER_TOKEN_FILE`); every container with a
read-only root filesystem, the image's non-root user, all capabilities dropped and no new
privileges. Covers: the built image's entry point, user and ports are those of the manifests;
each container really runs as 10001 with no capabilities and cannot write its root filesystem;
the controller lists the three nodes with the pools' hardware; one guest migrates across every
ordered pair of pools (6 migrations) and each succeeds.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.kustomize import render
from tests.support.nodes import kvmtimer_command
from tests.support.outside import find_tool

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("KVMTIMER_IMAGE", "localhost/kvmtimer:0.1.0")
USER = "10001:10001"
TOKEN = "image-e2e-token"
POOLS = ("ecv", "noecv", "legacy")
# One guest visits every ordered pair of pools.
ROUTE = ["ecv", "noecv", "legacy", "ecv", "legacy", "noecv", "ecv"]
HARDENED = ["--read-only", "--cap-drop=ALL", "--security-opt=no-new-privileges", f"--user={USER}"]


class Podman:
    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.env = dict(os.environ)
        self.env.setdefault("CONTAINERS_CONF", str(ROOT / "deploy" / "podman" / "containers.conf"))

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [self.binary, *args], capture_output=True, text=True, timeout=timeout, env=self.env
        )
        if check:
            assert done.returncode == 0, f"podman {' '.join(args)}: {done.stderr}"
        return done


@pytest.fixture(scope="module")
def podman() -> Podman:
    binary = find_tool("podman")
    if binary is None:
        pytest.skip("podman not installed (Debian podman; .ci/test installs it when root)")
    pm = Podman(binary)
    if pm.run("image", "exists", IMAGE, check=False).returncode != 0:
        pytest.skip(f"image {IMAGE} not built (run deploy/build-image.sh; .ci/test does when podman works)")
    return pm


def manifest_pools() -> dict[str, dict[str, str]]:
    """Pool name -> its KVMTIMER_* hardware settings, from the rendered default overlay."""
    objs = render(ROOT / "deploy" / "kubernetes" / "overlays" / "default")
    return {
        pool: next(
            o["data"]
            for o in objs
            if o["kind"] == "ConfigMap" and o["metadata"]["name"] == f"kvmtimer-node-pool-{pool}"
        )
        for pool in POOLS
    }


def secret_dir(base: Path, name: str, files: dict[str, Path | str]) -> Path:
    """A directory like a mounted Secret: owner 10001, mode 0440 (0444 when not root)."""
    directory = base / name
    directory.mkdir()
    for target, source in files.items():
        path = directory / target
        if isinstance(source, Path):
            shutil.copyfile(source, path)
        else:
            path.write_text(source)
        if os.geteuid() == 0:
            os.chown(path, 10001, 10001)
            path.chmod(0o440)
        else:
            path.chmod(0o444)
    return directory


def tls_files(pki: Path, name: str) -> dict[str, Path | str]:
    return {"tls.crt": pki / f"{name}.crt", "tls.key": pki / f"{name}.key", "ca.crt": pki / "ca.crt"}


TLS_ENV = [
    "-e=KVMTIMER_TLS_CERT=/etc/kvmtimer/tls/tls.crt",
    "-e=KVMTIMER_TLS_KEY=/etc/kvmtimer/tls/tls.key",
    "-e=KVMTIMER_TLS_CA=/etc/kvmtimer/tls/ca.crt",
]


@contextlib.contextmanager
def cluster(pm: Podman, tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """Network, three nodes, controller and a client container; yields (prefix, container names)."""
    prefix = f"kvmt-e2e-{os.getpid()}"
    network = f"{prefix}-net"
    controller = f"{prefix}-controller"
    pki = tmp_path / "pki"
    nodes = [f"--node=node-{pool}=node-{pool},kvmtimer-node" for pool in POOLS]
    made = subprocess.run(
        [*kvmtimer_command(), "certs", "--out", str(pki), *nodes, f"--controller-san={controller}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    token = secret_dir(tmp_path, "token", {"token": TOKEN + "\n"})
    names: list[str] = []
    pm.run("network", "create", network)
    try:
        for pool, settings in manifest_pools().items():
            name = f"{prefix}-node-{pool}"
            tls = secret_dir(tmp_path, f"tls-{pool}", tls_files(pki, f"node-{pool}"))
            env = [f"-e={k}={v}" for k, v in settings.items()]
            env += [f"-e=KVMTIMER_NODE_ID=node-{pool}", "-e=KVMTIMER_LISTEN=0.0.0.0:7000"]
            env += ["-e=KVMTIMER_HEALTH_LISTEN=0.0.0.0:7001", *TLS_ENV]
            pm.run(
                "run", "-d", f"--name={name}", f"--network={network}", "--network-alias=kvmtimer-node",
                *HARDENED, f"--volume={tls}:/etc/kvmtimer/tls:ro", *env, IMAGE, "node",
            )  # fmt: skip
            names.append(name)
        ctl_tls = secret_dir(tmp_path, "tls-controller", tls_files(pki, "controller"))
        pm.run(
            "run", "-d", f"--name={controller}", f"--network={network}", *HARDENED,
            f"--volume={ctl_tls}:/etc/kvmtimer/tls:ro", f"--volume={token}:/etc/kvmtimer/token:ro",
            "-e=KVMTIMER_LISTEN=0.0.0.0:7070", "-e=KVMTIMER_HEALTH_LISTEN=0.0.0.0:7071",
            # The state file on a writable volume (the Deployment's PersistentVolumeClaim).
            "--tmpfs=/var/lib/kvmtimer:mode=1777", "-e=KVMTIMER_STATE=/var/lib/kvmtimer/state.db",
            "-e=KVMTIMER_DISCOVER_DNS=kvmtimer-node:7000", "-e=KVMTIMER_DISCOVER_INTERVAL=1",
            # Nodes are dialled by address (aardvark-dns has no PTR records): check the shared name.
            "-e=KVMTIMER_TLS_SERVER_NAME=kvmtimer-node",
            "-e=KVMTIMER_TOKEN_FILE=/etc/kvmtimer/token/token", *TLS_ENV, IMAGE, "controller",
        )  # fmt: skip
        names.append(controller)
        client_tls = secret_dir(tmp_path, "tls-client", tls_files(pki, "client"))
        client = f"{prefix}-client"
        pm.run(
            "run", "-d", "--init", f"--name={client}", f"--network={network}", *HARDENED,
            f"--volume={client_tls}:/etc/kvmtimer/tls:ro", f"--volume={token}:/etc/kvmtimer/token:ro",
            f"-e=KVMTIMER_CONTROLLER={controller}:7070", "-e=KVMTIMER_TOKEN_FILE=/etc/kvmtimer/token/token",
            *TLS_ENV, "--entrypoint=sleep", IMAGE, "infinity",
        )  # fmt: skip
        names.append(client)
        yield prefix, names
    except BaseException:
        for name in names:
            print(f"--- podman logs {name} ---\n{pm.run('logs', name, check=False).stderr[-4000:]}")
        raise
    finally:
        if names:
            pm.run("rm", "--force", "--time=5", *names, check=False)
        pm.run("network", "rm", "--force", network, check=False)


def test_image_matches_the_manifests(podman: Podman) -> None:
    config = json.loads(podman.run("image", "inspect", IMAGE, "--format={{json .Config}}").stdout)
    objs = render(ROOT / "deploy" / "kubernetes" / "overlays" / "default")
    containers = [
        (o["spec"]["template"]["spec"], c)
        for o in objs
        if o["kind"] in ("Deployment", "StatefulSet")
        for c in o["spec"]["template"]["spec"]["containers"]
        if c["image"].split(":")[0].endswith("kvmtimer")
    ]
    assert config["Entrypoint"] == ["kvmtimer"] and all("command" not in c for _, c in containers)
    assert config["User"] == USER
    assert all(
        f"{s['securityContext']['runAsUser']}:{s['securityContext']['runAsGroup']}" == USER
        for s, _ in containers
    )
    exposed = {int(port.split("/")[0]) for port in config["ExposedPorts"]}
    assert exposed == {p["containerPort"] for _, c in containers for p in c["ports"]}


def test_cluster_of_containers_migrates_across_every_pool_pair(podman: Podman, tmp_path: Path) -> None:
    with cluster(podman, tmp_path) as (prefix, names):
        client = f"{prefix}-client"

        def cli(*argv: str, check: bool = True) -> Any:
            done = podman.run("exec", client, "kvmtimer", *argv, "--output", "json", check=False)
            if check:
                assert done.returncode == 0, done.stderr
            return json.loads(done.stdout) if done.returncode == 0 else None

        deadline = time.monotonic() + 90
        while True:
            listed = cli("nodes", check=False)
            healthy = {n["node_id"]: n for n in (listed or {}).get("nodes", []) if n["healthy"]}
            if len(healthy) == 3:
                break
            assert time.monotonic() < deadline, f"controller lists {listed}"
            time.sleep(1)
        pools = manifest_pools()
        for pool in POOLS:
            node = healthy[f"node-{pool}"]
            assert str(node["ecv"]) == pools[pool]["KVMTIMER_ECV"], node
            assert node["api_profile"] == f"API_PROFILE_{pools[pool]['KVMTIMER_API_PROFILE']}", node

        for name in names:  # hardened as the manifests require
            status = podman.run("exec", name, "cat", "/proc/1/status").stdout
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            assert fields["Uid"].split()[:2] == ["10001", "10001"], name
            assert int(fields["CapEff"].strip(), 16) == 0 and int(fields["CapBnd"].strip(), 16) == 0, name
            assert fields["NoNewPrivs"].strip() == "1", name
            wrote = podman.run("exec", name, "touch", "/opt/kvmtimer/x", check=False)
            assert wrote.returncode != 0 and "Read-only file system" in wrote.stderr, name

        cli("create-guest", "--id", "g", "--node", f"node-{ROUTE[0]}")
        for src, dst in itertools.pairwise(ROUTE):
            moved = cli("migrate", "g", "--to", f"node-{dst}")
            assert moved["phase"] == "MIGRATION_PHASE_SUCCEEDED", (src, dst, moved)
            assert (moved["source"], moved["destination"]) == (f"node-{src}", f"node-{dst}")
        guest = cli("guests")["guests"]
        assert [(g["guest_id"], g["node_id"]) for g in guest] == [("g", f"node-{ROUTE[-1]}")]
