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

The controller's state file lives on a named podman volume (the Deployment's
PersistentVolumeClaim) mounted where the image puts it (its KVMTIMER_STATE, which must be the
manifest's, in the directory the Deployment mounts its claim on, owned by the image's user).
Covers: after `podman restart` (SIGTERM) and after `podman rm -f --time=0` (SIGKILL) + `podman
run` of a new container on the same volume, the controller lists the same guests (id, node, VM,
state, generation) and migration records, reports no orphan or lost guest, the nodes still run
exactly the same VMs (ListVms, asked of the nodes with the controller's certificate), and new
guests and migrations get ids never used before. The cluster is shared by the module's tests.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
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


# What the controller lists (nodes, guests, migrations, as `kvmtimer ... --output json` shows
# them) and what the nodes themselves run (ListVms, with the controller's certificate: the only
# client they accept), in one process in the client container. argv: controller, then NODE=ADDR.
LISTINGS = """
import json, os, sys, grpc
from google.protobuf import json_format
from kvmtimer.v1 import controller_pb2 as cpb, controller_pb2_grpc, node_pb2, node_pb2_grpc
def creds(tls):
    read = lambda name: open(tls + name, "rb").read()
    return grpc.ssl_channel_credentials(read("ca.crt"), read("tls.key"), read("tls.crt"))
def listed(reply, field):
    return [
        json_format.MessageToDict(m, preserving_proto_field_name=True,
                                  always_print_fields_with_no_presence=True)
        for m in getattr(reply, field)
    ]
token = open(os.environ["KVMTIMER_TOKEN_FILE"]).read().strip()
auth = [("authorization", "Bearer " + token)]
out = {"vms": {}, "errors": []}
try:
    with grpc.secure_channel(sys.argv[1], creds("/etc/kvmtimer/tls/")) as ch:
        ctl = controller_pb2_grpc.ControllerStub(ch)
        out["nodes"] = listed(ctl.ListNodes(cpb.ListNodesRequest(), metadata=auth, timeout=5), "nodes")
        out["guests"] = listed(ctl.ListGuests(cpb.ListGuestsRequest(), metadata=auth, timeout=5), "guests")
        reply = ctl.ListMigrations(cpb.ListMigrationsRequest(), metadata=auth, timeout=5)
        out["migrations"] = listed(reply, "migrations")
except grpc.RpcError as err:
    out["errors"].append(f"controller: {err.code()}: {err.details()}")
options = [("grpc.ssl_target_name_override", "kvmtimer-node")]
for node_id, address in (arg.split("=") for arg in sys.argv[2:]):
    try:
        with grpc.secure_channel(address, creds("/etc/kvmtimer/controller-tls/"), options=options) as ch:
            reply = node_pb2_grpc.NodeStub(ch).ListVms(node_pb2.ListVmsRequest(), timeout=5)
    except grpc.RpcError as err:
        out["errors"].append(f"{node_id}: {err.code()}: {err.details()}")
        continue
    out["vms"][node_id] = sorted([vm.vm_id, vm.running, vm.owner.guest_id] for vm in reply.vms)
print(json.dumps(out))
"""


class Cluster:
    """The containers of one test cluster and the calls the tests make into it."""

    def __init__(self, pm: Podman, prefix: str, secrets: dict[str, Path]) -> None:
        self.pm = pm
        self.prefix = prefix
        self.network = f"{prefix}-net"
        self.controller = f"{prefix}-controller"
        self.client = f"{prefix}-client"
        # The controller's state volume (the Deployment's PersistentVolumeClaim), mounted where
        # the image keeps its state (KVMTIMER_STATE): it outlives the controller's containers.
        self.state_volume = f"{prefix}-state"
        self.secrets = secrets
        self.names: list[str] = []

    def node_container(self, pool: str) -> str:
        return f"{self.prefix}-node-{pool}"

    def run_controller(self) -> None:
        self.pm.run(
            "run", "-d", f"--name={self.controller}", f"--network={self.network}", *HARDENED,
            f"--volume={self.secrets['tls-controller']}:/etc/kvmtimer/tls:ro",
            f"--volume={self.secrets['token']}:/etc/kvmtimer/token:ro",
            f"--volume={self.state_volume}:/var/lib/kvmtimer",  # the image's KVMTIMER_STATE
            "-e=KVMTIMER_LISTEN=0.0.0.0:7070", "-e=KVMTIMER_HEALTH_LISTEN=0.0.0.0:7071",
            "-e=KVMTIMER_DISCOVER_DNS=kvmtimer-node:7000", "-e=KVMTIMER_DISCOVER_INTERVAL=1",
            # Nodes are dialled by address (aardvark-dns has no PTR records): check the shared name.
            "-e=KVMTIMER_TLS_SERVER_NAME=kvmtimer-node",
            "-e=KVMTIMER_TOKEN_FILE=/etc/kvmtimer/token/token", *TLS_ENV, IMAGE, "controller",
        )  # fmt: skip

    def cli(self, *argv: str, check: bool = True) -> Any:
        """`kvmtimer ARGV --output json` in the client container; its JSON (None if it failed)."""
        done = self.pm.run("exec", self.client, "kvmtimer", *argv, "--output", "json", check=False)
        if check:
            assert done.returncode == 0, done.stderr
        return json.loads(done.stdout) if done.returncode == 0 else None

    def _list_once(self) -> dict[str, Any]:
        nodes = [f"node-{pool}={self.node_container(pool)}:7000" for pool in POOLS]
        done = self.pm.run(
            "exec", self.client, "python3", "-c", LISTINGS, f"{self.controller}:7070", *nodes, check=False
        )
        if done.returncode != 0:
            return {"errors": [done.stderr[-2000:]]}
        listed: dict[str, Any] = json.loads(done.stdout)
        return listed

    def _wait_listings(self, ready: Callable[[dict[str, Any]], bool], timeout_s: float) -> dict[str, Any]:
        # Retried: the network's DNS (aardvark-dns) sometimes answers no lookup at all for
        # about 25 s after `podman restart` of a container on it; short deadlines, retried.
        deadline = time.monotonic() + timeout_s
        while True:
            listed = self._list_once()
            if not listed["errors"] and ready(listed):
                return listed
            assert time.monotonic() < deadline, f"listings: {listed}"
            time.sleep(1)

    def listings(self, timeout_s: float = 30) -> dict[str, Any]:
        """The controller's nodes, guests and migrations and every node's VMs as
        [vm_id, running, owner guest] (`vms`, by node id), once all of them answer."""
        return self._wait_listings(lambda _: True, timeout_s)

    def wait_nodes_healthy(self, timeout_s: float = 90) -> dict[str, Any]:
        """Wait until the controller answers and lists the three nodes healthy; its listings."""
        return self._wait_listings(
            lambda listed: sum(n["healthy"] for n in listed["nodes"]) == len(POOLS), timeout_s
        )


@pytest.fixture(scope="module")
def cluster(
    podman: Podman, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Cluster]:
    """Network, three nodes, controller (with its state volume) and a client container."""
    tmp_path = tmp_path_factory.mktemp("image")
    pm = podman
    prefix = f"kvmt-e2e-{os.getpid()}"
    pki = tmp_path / "pki"
    nodes = [f"--node=node-{pool}=node-{pool},kvmtimer-node" for pool in POOLS]
    made = subprocess.run(
        [*kvmtimer_command(), "certs", "--out", str(pki), *nodes, f"--controller-san={prefix}-controller"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    secrets = {
        "token": secret_dir(tmp_path, "token", {"token": TOKEN + "\n"}),
        "tls-controller": secret_dir(tmp_path, "tls-controller", tls_files(pki, "controller")),
        "tls-client": secret_dir(tmp_path, "tls-client", tls_files(pki, "client")),
    }
    c = Cluster(pm, prefix, secrets)
    failed_before = request.session.testsfailed
    pm.run("network", "create", c.network)
    try:
        for pool, settings in manifest_pools().items():
            name = c.node_container(pool)
            tls = secret_dir(tmp_path, f"tls-{pool}", tls_files(pki, f"node-{pool}"))
            env = [f"-e={k}={v}" for k, v in settings.items()]
            env += [f"-e=KVMTIMER_NODE_ID=node-{pool}", "-e=KVMTIMER_LISTEN=0.0.0.0:7000"]
            env += ["-e=KVMTIMER_HEALTH_LISTEN=0.0.0.0:7001", *TLS_ENV]
            pm.run(
                "run", "-d", f"--name={name}", f"--network={c.network}", "--network-alias=kvmtimer-node",
                *HARDENED, f"--volume={tls}:/etc/kvmtimer/tls:ro", *env, IMAGE, "node",
            )  # fmt: skip
            c.names.append(name)
        c.run_controller()
        c.names.append(c.controller)
        pm.run(
            "run", "-d", "--init", f"--name={c.client}", f"--network={c.network}", *HARDENED,
            f"--volume={secrets['tls-client']}:/etc/kvmtimer/tls:ro",
            f"--volume={secrets['token']}:/etc/kvmtimer/token:ro",
            # The controller's certificate too, to ask the nodes themselves (ListVms).
            f"--volume={secrets['tls-controller']}:/etc/kvmtimer/controller-tls:ro",
            f"-e=KVMTIMER_CONTROLLER={c.controller}:7070", "-e=KVMTIMER_TOKEN_FILE=/etc/kvmtimer/token/token",
            *TLS_ENV, "--entrypoint=sleep", IMAGE, "infinity",
        )  # fmt: skip
        c.names.append(c.client)
        yield c
        if request.session.testsfailed > failed_before:
            for name in c.names:
                print(f"--- podman logs {name} ---\n{pm.run('logs', name, check=False).stderr[-8000:]}")
    finally:
        if c.names:
            pm.run("rm", "--force", "--time=5", *c.names, check=False)
        pm.run("network", "rm", "--force", c.network, check=False)
        pm.run("volume", "rm", "--force", c.state_volume, check=False)


def manifest_controller() -> tuple[dict[str, Any], dict[str, Any]]:
    """The rendered controller Deployment's pod spec and its controller container."""
    objs = render(ROOT / "deploy" / "kubernetes" / "overlays" / "default")
    (spec,) = [
        o["spec"]["template"]["spec"]
        for o in objs
        if o["kind"] == "Deployment" and o["metadata"]["name"] == "kvmtimer-controller"
    ]
    (container,) = [c for c in spec["containers"] if c["name"] == "controller"]
    return spec, container


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


def test_image_state_path_is_the_manifests_volume(podman: Podman) -> None:
    """The image's state file (KVMTIMER_STATE) is the manifest's, in the directory the
    Deployment mounts its PersistentVolumeClaim on, and that directory belongs to the image's
    user (so a new named volume mounted there is writable by it)."""
    config = json.loads(podman.run("image", "inspect", IMAGE, "--format={{json .Config}}").stdout)
    image_env = dict(item.split("=", 1) for item in config["Env"])
    spec, container = manifest_controller()
    manifest_env = {e["name"]: e.get("value") for e in container["env"]}
    assert manifest_env["KVMTIMER_STATE"] == image_env["KVMTIMER_STATE"]
    state_dir = os.path.dirname(image_env["KVMTIMER_STATE"])
    mounted = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert state_dir in mounted, f"the Deployment mounts nothing on {state_dir}"
    claim = volumes[mounted[state_dir]]["persistentVolumeClaim"]["claimName"]
    assert claim == "kvmtimer-controller-state"
    owner = podman.run("run", "--rm", "--entrypoint=stat", IMAGE, "-c", "%u:%g %a", state_dir).stdout
    assert owner.split() == [USER, "700"]


def test_cluster_of_containers_migrates_across_every_pool_pair(cluster: Cluster) -> None:
    healthy = {n["node_id"]: n for n in cluster.wait_nodes_healthy()["nodes"]}
    pools = manifest_pools()
    for pool in POOLS:
        node = healthy[f"node-{pool}"]
        assert str(node["ecv"]) == pools[pool]["KVMTIMER_ECV"], node
        assert node["api_profile"] == f"API_PROFILE_{pools[pool]['KVMTIMER_API_PROFILE']}", node

    for name in cluster.names:  # hardened as the manifests require
        status = cluster.pm.run("exec", name, "cat", "/proc/1/status").stdout
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        assert fields["Uid"].split()[:2] == ["10001", "10001"], name
        assert int(fields["CapEff"].strip(), 16) == 0 and int(fields["CapBnd"].strip(), 16) == 0, name
        assert fields["NoNewPrivs"].strip() == "1", name
        wrote = cluster.pm.run("exec", name, "touch", "/opt/kvmtimer/x", check=False)
        assert wrote.returncode != 0 and "Read-only file system" in wrote.stderr, name

    cli = cluster.cli
    cli("create-guest", "--id", "g", "--node", f"node-{ROUTE[0]}")
    for src, dst in itertools.pairwise(ROUTE):
        moved = cli("migrate", "g", "--to", f"node-{dst}")
        assert moved["phase"] == "MIGRATION_PHASE_SUCCEEDED", (src, dst, moved)
        assert (moved["source"], moved["destination"]) == (f"node-{src}", f"node-{dst}")
    guests = cli("guests")["guests"]
    assert [(g["guest_id"], g["node_id"]) for g in guests if g["guest_id"] == "g"] == [
        ("g", f"node-{ROUTE[-1]}")
    ]


# What of a guest and of a migration record a restart must keep exactly.
GUEST_KEPT = ("guest_id", "node_id", "vm_id", "vcpus", "state", "generation", "migrations")
MIGRATION_KEPT = (
    "migration_id",
    "guest_id",
    "source",
    "destination",
    "method",
    "phase",
    "counter_error_ticks",
)


def kept(listed: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(guests, migrations, node VMs) of `Cluster.listings()`, as a restart must keep them."""
    guests = {g["guest_id"]: {k: g.get(k) for k in GUEST_KEPT} for g in listed["guests"]}
    migrations = {m["migration_id"]: {k: m.get(k) for k in MIGRATION_KEPT} for m in listed["migrations"]}
    return guests, migrations, listed["vms"]


def test_controller_state_volume_survives_restart_and_a_new_container(cluster: Cluster) -> None:
    """Guests, placements and migration records come back from the state volume after
    `podman restart` (SIGTERM) and after `podman rm -f --time=0` (SIGKILL) + `podman run` of
    a new container on the same volume; the nodes keep every VM; ids are never reused."""
    cli = cluster.cli
    cluster.wait_nodes_healthy()
    created = [cli("create-guest", "--node", f"node-{pool}")["guest_id"] for pool in ("ecv", "legacy")]
    moved = cli("migrate", created[0], "--to", "node-noecv")
    assert moved["phase"] == "MIGRATION_PHASE_SUCCEEDED", moved
    guests, migrations, vms = kept(cluster.listings())
    assert guests[created[0]]["node_id"] == "node-noecv" and moved["migration_id"] in migrations
    assert all(g["state"] == "GUEST_STATE_RUNNING" for g in guests.values()), guests
    running = {vm_id: (node, up, owner) for node, listed in vms.items() for vm_id, up, owner in listed}
    for g in guests.values():  # each guest's VM runs on its node
        assert running[g["vm_id"]] == (g["node_id"], True, g["guest_id"]), (g, vms)
    seen_guests, seen_migrations = set(guests), set(migrations)

    for how in ("restart", "new container"):
        if how == "restart":
            cluster.pm.run("restart", "--time=10", cluster.controller)
        else:
            cluster.pm.run("rm", "--force", "--time=0", cluster.controller)
            cluster.run_controller()
        listed = cluster.wait_nodes_healthy()  # the controller is back and has reached every node
        assert all(not n["orphans"] and not n["lost_guests"] for n in listed["nodes"]), (how, listed)
        assert kept(listed) == (guests, migrations, vms), how  # nothing lost, moved or destroyed

        new = cli("create-guest", "--node", "node-ecv")  # ids come from the stored counters
        assert new["guest_id"] not in seen_guests, (how, new, seen_guests)
        to = "node-legacy" if guests[created[1]]["node_id"] == "node-ecv" else "node-ecv"
        again = cli("migrate", created[1], "--to", to)
        assert again["phase"] == "MIGRATION_PHASE_SUCCEEDED", (how, again)
        assert again["migration_id"] not in seen_migrations, (how, again, seen_migrations)
        before = guests
        guests, migrations, vms = kept(cluster.listings())
        on_nodes = {vm[0]: node for node, listed_vms in vms.items() for vm in listed_vms}
        for g in before.values():  # what the restarted controller did not touch is still there
            if g["guest_id"] != created[1]:
                assert guests[g["guest_id"]] == g and on_nodes[g["vm_id"]] == g["node_id"], (how, g, vms)
        assert set(guests) == set(before) | {new["guest_id"]}, (how, guests)
        seen_guests |= set(guests)
        seen_migrations |= set(migrations)
