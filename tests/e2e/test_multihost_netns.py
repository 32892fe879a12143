"""Several hosts on one machine: a controller and three nodes, each in its own network namespace.

The test builds the network itself (tests/support/netns.py): one namespace per host on a private
/24 behind a bridge in a fifth namespace, /etc/hosts entries in the controller's namespace that
stand in for cluster DNS, and removes all of it at the end, also on failure. It is skipped, with
the reason, where namespaces cannot be created (not root, no iproute2, no permission).

Hosts: `ecv-vhe` (FEAT_ECV 2, VHE, 6.4+ API; configured by KVMTIMER_* environment variables),
`ecv-nvhe` (ECV 2, nVHE, 2021 series API; configured by a TOML file) and `noecv` (no ECV, nVHE,
2021 series API; configured by flags). Everything speaks mutual TLS with certificates from
`kvmtimer certs`; the controller also requires a bearer token. The controller discovers the two
ECV nodes through the A records of one name (`nodes.kvmtimer.test:7000`); `noecv` registers
itself (`--register-with`). From inside the controller's namespace the `kvmtimer` client commands
move one guest along every ordered pair of hosts (ECV->ECV, ECV->non-ECV, non-ECV->ECV both
ways), and the guest's own observations show a monotonic counter. Refusals checked on the way:
a client without the token, a client without certificates, and a node asked to serve plaintext
on a non-loopback address.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support import netns
from tests.support.nodes import kvmtimer_command
from tests.support.wait import until_sync

pytestmark = pytest.mark.e2e

DOMAIN = "kvmtimer.test"
TOKEN = "netns-e2e-token"
NODE_PORT = 7000
CONTROLLER_PORT = 7070
HOSTS = ["ctl", "ecv-vhe", "ecv-nvhe", "noecv"]
EXPECTED = {  # node id -> (ecv, vhe, api profile)
    "ecv-vhe": (2, True, "API_PROFILE_VM_COUNTER_OFFSET"),
    "ecv-nvhe": (2, False, "API_PROFILE_VCPU_OFFSETS"),
    "noecv": (0, False, "API_PROFILE_VCPU_OFFSETS"),
}
# One guest visits every ordered pair of hosts.
ROUTE = ["ecv-vhe", "ecv-nvhe", "noecv", "ecv-vhe", "noecv", "ecv-nvhe", "ecv-vhe"]


@pytest.fixture(scope="module")
def network_available() -> None:
    try:
        netns.check_available()
    except netns.NetnsUnavailable as err:
        pytest.skip(f"network namespaces unavailable: {err}")


def hosts_files(hosts: Mapping[str, netns.NetHost]) -> dict[str, str]:
    """The controller's /etc/hosts: forward and reverse names of the nodes."""
    lines = ["127.0.0.1 localhost"]
    for name in ("ecv-vhe", "ecv-nvhe"):
        lines.append(f"{hosts[name].address} {name}.{DOMAIN} nodes.{DOMAIN}")
    lines.append(f"{hosts['noecv'].address} noecv.{DOMAIN}")
    return {"ctl": "\n".join(lines) + "\n"}


def tls_env(pki: Path, name: str) -> dict[str, str]:
    return {
        "KVMTIMER_TLS_CERT": str(pki / f"{name}.crt"),
        "KVMTIMER_TLS_KEY": str(pki / f"{name}.key"),
        "KVMTIMER_TLS_CA": str(pki / "ca.crt"),
    }


def base_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVMTIMER_")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def wait_log(
    path: Path, event: str, proc: subprocess.Popen[bytes], timeout_s: float = 30.0
) -> dict[str, Any]:

    def logged() -> dict[str, Any] | None:
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("event") == event:
                    return record
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before {event!r}:\n{path.read_text()}")
        return None

    return until_sync(logged, timeout_s=timeout_s, poll_s=0.1, what=f"{event!r} in {path}")


@contextlib.contextmanager
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """SIGTERM (then SIGKILL) every process started in the block."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start(
    procs: list[subprocess.Popen[bytes]],
    host: netns.NetHost,
    args: Sequence[str],
    env: Mapping[str, str],
    log: Path,
) -> subprocess.Popen[bytes]:
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            host.command([*kvmtimer_command(), *args]),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=base_env(env),
        )
    procs.append(proc)
    return proc


def test_controller_and_three_hosts_in_namespaces(network_available: None, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    with netns.host_network(HOSTS, hosts_files) as hosts:
        ctl, vhe, nvhe, noecv = (hosts[h] for h in HOSTS)
        node_sans = {name: f"{name}.{DOMAIN},{hosts[name].address}" for name in EXPECTED}
        made = subprocess.run(
            [
                *kvmtimer_command(),
                "certs",
                "--out",
                str(pki),
                "--controller-san",
                ctl.address,
                *(a for name, sans in node_sans.items() for a in ("--node", f"{name}={sans}")),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert made.returncode == 0, made.stderr
        controller_address = f"{ctl.address}:{CONTROLLER_PORT}"

        with processes() as procs:
            # ecv-vhe: settings from the environment only.
            vhe_env = {
                "KVMTIMER_NODE_ID": "ecv-vhe",
                "KVMTIMER_ECV": "2",
                "KVMTIMER_VHE": "true",
                "KVMTIMER_API_PROFILE": "VM_COUNTER_OFFSET",
                "KVMTIMER_LISTEN": f"{vhe.address}:{NODE_PORT}",
                "KVMTIMER_HEALTH_LISTEN": f"{vhe.address}:{NODE_PORT + 1}",
                **tls_env(pki, "ecv-vhe"),
            }
            # ecv-nvhe: settings from a config file.
            config = tmp_path / "ecv-nvhe.toml"
            config.write_text(
                "[node]\n"
                'node-id = "ecv-nvhe"\necv = 2\nvhe = false\napi-profile = "VCPU_OFFSETS"\n'
                f'listen = "{nvhe.address}:{NODE_PORT}"\n'
                + "".join(
                    f'{k.removeprefix("KVMTIMER_").lower()} = "{v}"\n'
                    for k, v in tls_env(pki, "ecv-nvhe").items()
                )
            )
            # noecv: flags, and it registers itself with the controller.
            noecv_args = [
                "node",
                "--node-id",
                "noecv",
                "--ecv",
                "0",
                "--api-profile",
                "VCPU_OFFSETS",
                "--listen",
                f"{noecv.address}:{NODE_PORT}",
                "--register-with",
                controller_address,
                "--register-interval",
                "1",
                "--advertise",
                f"noecv.{DOMAIN}:{NODE_PORT}",
                "--tls-cert",
                str(pki / "noecv.crt"),
                "--tls-key",
                str(pki / "noecv.key"),
                "--tls-ca",
                str(pki / "ca.crt"),
            ]
            nodes = {
                "ecv-vhe": start(procs, vhe, ["node"], vhe_env, tmp_path / "ecv-vhe.log"),
                "ecv-nvhe": start(
                    procs, nvhe, ["node", "--config", str(config)], {}, tmp_path / "ecv-nvhe.log"
                ),
                "noecv": start(procs, noecv, noecv_args, {"KVMTIMER_TOKEN": TOKEN}, tmp_path / "noecv.log"),
            }
            for name, proc in nodes.items():
                record = wait_log(tmp_path / f"{name}.log", "node_listening", proc)
                assert record["security"] == "mtls(clients=controller)", record
                assert (record["ecv"], record["vhe"]) == EXPECTED[name][:2]
            controller = start(
                procs,
                ctl,
                [
                    "controller",
                    "--listen",
                    controller_address,
                    "--health-listen",
                    f"{ctl.address}:{CONTROLLER_PORT + 1}",
                    "--discover-dns",
                    f"nodes.{DOMAIN}:{NODE_PORT}",
                    "--discover-interval",
                    "0.5",
                ],
                {"KVMTIMER_TOKEN": TOKEN, **tls_env(pki, "controller")},
                tmp_path / "controller.log",
            )
            listening = wait_log(tmp_path / "controller.log", "controller_listening", controller)
            assert listening["security"] == "mtls+token"

            client_env = {
                "KVMTIMER_CONTROLLER": controller_address,
                "KVMTIMER_TOKEN": TOKEN,
                **tls_env(pki, "client"),
            }

            def cli(*args: str, env: Mapping[str, str] = client_env) -> subprocess.CompletedProcess[str]:
                return subprocess.run(
                    ctl.command([*kvmtimer_command(), *args]),
                    capture_output=True,
                    text=True,
                    timeout=60,
                    env=base_env(env),
                )

            def cli_json(*args: str) -> Any:
                done = cli(*args, "--output", "json")
                assert done.returncode == 0, done.stderr
                return json.loads(done.stdout)

            # Discovery (ecv-*) and self-registration (noecv) find all three nodes.
            def all_found() -> list[dict[str, Any]] | None:
                listed: list[dict[str, Any]] = cli_json("nodes")["nodes"]
                healthy = sorted(n["node_id"] for n in listed if n["healthy"])
                return listed if healthy == sorted(EXPECTED) else None

            listed = until_sync(all_found, timeout_s=30, poll_s=0.5, what="all three nodes found and healthy")
            for n in listed:
                assert (n["ecv"], n["vhe"], n["api_profile"]) == EXPECTED[n["node_id"]], n
                assert n["address"] == f"{n['node_id']}.{DOMAIN}:{NODE_PORT}"

            # Refusals change nothing.
            no_token = cli("create-guest", "--id", "intruder", env={**client_env, "KVMTIMER_TOKEN": ""})
            assert no_token.returncode == 2 and "UNAUTHENTICATED" in no_token.stderr, no_token.stderr
            no_cert = cli(
                "nodes",
                "--insecure",
                env={"KVMTIMER_CONTROLLER": controller_address, "KVMTIMER_TOKEN": TOKEN},
            )
            assert no_cert.returncode == 3 and "UNAVAILABLE" in no_cert.stderr, no_cert.stderr
            plaintext = subprocess.run(
                noecv.command(
                    [*kvmtimer_command(), "node", "--listen", f"{noecv.address}:{NODE_PORT + 100}"]
                ),
                capture_output=True,
                text=True,
                timeout=60,
                env=base_env({}),
            )
            assert plaintext.returncode == 2 and "not a loopback address" in plaintext.stderr
            assert cli_json("guests")["guests"] == []

            guest = cli_json("create-guest", "--id", "g", "--vcpus", "2", "--ptimer", "--node", ROUTE[0])
            assert guest["node_id"] == ROUTE[0]
            for src, dst in itertools.pairwise(ROUTE):
                # Every hop has a 2021-series side, which cannot carry the ptimer state.
                moved = cli_json("migrate", "g", "--to", dst, "--allow-state-loss")
                assert (moved["source"], moved["destination"]) == (src, dst)
                assert moved["phase"] == "MIGRATION_PHASE_SUCCEEDED", moved
                assert moved["not_carried"] == ["PTIMER_CTL", "PTIMER_CVAL"], moved
                assert moved["method"] == EXPECTED[dst][2].replace("API_PROFILE_", "MIGRATION_METHOD_")
            pairs = {(m["source"], m["destination"]) for m in cli_json("migrations")["migrations"]}
            assert pairs == {(a, b) for a in EXPECTED for b in EXPECTED if a != b}
            [observed] = cli_json("guests", "--observations")["guests"]
            assert observed["node_id"] == ROUTE[-1] and observed["migrations"] == len(ROUTE) - 1
            for vcpu in observed["observations"]["vcpus"]:
                assert int(vcpu["min_step_v"]) >= 0 and int(vcpu["min_step_p"]) >= 0
            assert cli("destroy-guest", "g").returncode == 0

    listed_ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    assert all(h.name not in listed_ns for h in hosts.values())
    assert not any((netns.ETC_NETNS / h.name).exists() for h in hosts.values())
