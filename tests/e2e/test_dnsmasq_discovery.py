"""Node discovery against a real DNS server (dnsmasq), not one written for the tests.

* Loopback (no root needed): dnsmasq on 127.0.0.1 at a free port serves the SRV records of
  `_grpc._tcp.kvmtimer-node.kvmtimer.test`: two node processes, both on target `localhost` (so
  dialling needs nothing from the system's resolver) at their own ports; the controller asks
  dnsmasq through `--discover-nameserver` and registers both nodes at the SRV targets and ports,
  with the ids the nodes call themselves.
* Network namespace (root): dnsmasq is *the* resolver of a fresh namespace (its resolv.conf names
  127.0.0.1 with search domain kvmtimer.test, as a pod's does). The controller finds `n1` through
  the SRV records of the short name `_grpc._tcp.kvmtimer-node` (search domain applied, as on
  Kubernetes) and `n2`/`n3` through the two A records of `nodes.kvmtimer.test:7000`, dialled
  under their reverse (PTR) names; a guest then migrates across the discovered nodes.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support import netns
from tests.support.dnsmasq import Zone, dnsmasq_server
from tests.support.mqtt import free_port
from tests.support.nodes import kvmtimer_command, kvmtimer_process, wait_for_log_event
from tests.support.outside import require_tool

pytestmark = pytest.mark.e2e

DOMAIN = "kvmtimer.test"
SRV_NAME = f"_grpc._tcp.kvmtimer-node.{DOMAIN}"


def client_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("KVMTIMER_")}


def wait_nodes(list_nodes: Any, expected: dict[str, str], timeout_s: float = 30.0) -> None:
    """Until the controller lists exactly `expected` (node id -> address), all healthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = list_nodes()
        seen = {n["node_id"]: n["address"] for n in nodes if n["healthy"]}
        if seen == expected:
            return
        assert time.monotonic() < deadline, f"controller lists {nodes}, expected {expected}"
        time.sleep(0.2)


def test_srv_discovery_from_dnsmasq_on_loopback() -> None:
    binary = require_tool("dnsmasq")
    base = ["--listen", "127.0.0.1:0", "--clock", "simulated"]
    with (
        kvmtimer_process("node", [*base, "--node-id", "n1"]) as p1,
        kvmtimer_process("node", [*base, "--node-id", "n2", "--api-profile", "VCPU_OFFSETS"]) as p2,
    ):
        ports = [wait_for_log_event(p, "node_listening")["port"] for p in (p1, p2)]
        assert all(isinstance(p, int) for p in ports)
        zone = Zone(DOMAIN, srv=[(SRV_NAME, "localhost", int(str(port))) for port in ports])
        dns_port = free_port()
        with dnsmasq_server(binary, zone, port=dns_port):
            args = ["--listen", "127.0.0.1:0", "--health-interval", "0", "--discover-dns", SRV_NAME]
            args += ["--discover-nameserver", f"127.0.0.1:{dns_port}", "--discover-interval", "0.5"]
            with kvmtimer_process("controller", args) as ctl:
                controller = f"127.0.0.1:{wait_for_log_event(ctl, 'controller_listening')['port']}"

                def list_nodes() -> Any:
                    done = subprocess.run(
                        [*kvmtimer_command(), "nodes", "--controller", controller, "--output", "json"],
                        capture_output=True,
                        text=True,
                        timeout=30,
                        env=client_env(),
                    )
                    assert done.returncode == 0, done.stderr
                    return json.loads(done.stdout)["nodes"]

                wait_nodes(list_nodes, {"n1": f"localhost:{ports[0]}", "n2": f"localhost:{ports[1]}"})


@contextlib.contextmanager
def namespace(resolv_conf: str) -> Iterator[str]:
    """A network namespace with only loopback up and its own resolv.conf; removed at the end."""
    try:
        netns.check_available()
    except netns.NetnsUnavailable as err:
        pytest.skip(f"network namespaces unavailable: {err}")
    name = f"kvtdns{os.getpid() % 100000}"
    etc = netns.ETC_NETNS / name
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=30)
    try:
        subprocess.run(
            ["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True, timeout=30
        )
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(resolv_conf)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        if etc.exists():
            for child in etc.iterdir():
                child.unlink()
            etc.rmdir()


def inside(
    ns: str, command: str, args: Sequence[str]
) -> contextlib.AbstractContextManager[subprocess.Popen[str]]:
    """`kvmtimer COMMAND ARGS` inside the namespace (tests.support.nodes.kvmtimer_process)."""
    return kvmtimer_process(command, args, prefix=["ip", "netns", "exec", ns])


def test_srv_and_a_discovery_with_dnsmasq_as_the_resolver(tmp_path: Path) -> None:
    binary = require_tool("dnsmasq")
    zone = Zone(
        DOMAIN,
        srv=[(SRV_NAME, f"n1.{DOMAIN}", 7000)],
        # Each node's own name first: that is the PTR record of its address.
        hosts=[
            (f"n1.{DOMAIN}", "127.0.0.4"),
            (f"n2.{DOMAIN}", "127.0.0.2"),
            (f"n3.{DOMAIN}", "127.0.0.3"),
            (f"nodes.{DOMAIN}", "127.0.0.2"),
            (f"nodes.{DOMAIN}", "127.0.0.3"),
        ],
    )
    with (
        namespace(f"nameserver 127.0.0.1\nsearch {DOMAIN}\noptions ndots:5\n") as ns,
        dnsmasq_server(binary, zone, port=53, prefix=["ip", "netns", "exec", ns]),
        inside(ns, "node", ["--listen", "127.0.0.4:7000", "--node-id", "n1", "--ecv", "2", "--vhe"]) as n1,
        inside(
            ns, "node", ["--listen", "127.0.0.2:7000", "--node-id", "n2", "--api-profile", "VCPU_OFFSETS"]
        ) as n2,
        inside(
            ns, "node", ["--listen", "127.0.0.3:7000", "--node-id", "n3", "--api-profile", "BY_VALUE"]
        ) as n3,
    ):
        for proc in (n1, n2, n3):
            wait_for_log_event(proc, "node_listening")
        args = ["--listen", "127.0.0.1:7070", "--health-interval", "0", "--discover-interval", "0.5"]
        args += ["--discover-dns", "_grpc._tcp.kvmtimer-node", "--discover-dns", f"nodes.{DOMAIN}:7000"]
        with inside(ns, "controller", [*args, "--insecure"]) as ctl:
            wait_for_log_event(ctl, "controller_listening")

            to_controller = ["--controller", "127.0.0.1:7070", "--output", "json"]

            def cli(*argv: str) -> Any:
                done = subprocess.run(
                    ["ip", "netns", "exec", ns, *kvmtimer_command(), *argv, *to_controller],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    env=client_env(),
                )
                assert done.returncode == 0, done.stderr
                return json.loads(done.stdout)

            expected = {n: f"{n}.{DOMAIN}:7000" for n in ("n1", "n2", "n3")}
            wait_nodes(lambda: cli("nodes")["nodes"], expected)
            cli("create-guest", "--id", "g", "--node", "n1")
            for destination in ("n2", "n3", "n1"):
                moved = cli("migrate", "g", "--to", destination)
                assert moved["phase"] == "MIGRATION_PHASE_SUCCEEDED", moved
    assert not (netns.ETC_NETNS / ns).exists()  # the namespace's resolv.conf is gone
