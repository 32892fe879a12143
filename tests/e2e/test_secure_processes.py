"""Real `kvmtimer` processes on loopback configured as on Kubernetes: mutual TLS everywhere, a
bearer token, settings from KVMTIMER_* variables and a YAML file instead of flags, the plaintext
probe port, DNS discovery (A record of `localhost`) and self-registration. Runs without root
(tests/e2e/test_multihost_netns.py does the same across network namespaces).

Edge cases: the probe port answers SERVING without any certificate while the service port
refuses a plaintext client; a node configured only through the environment and one only through
a file; a bad environment value exits 2 before serving; a migration each way through the client
commands, which also take their TLS settings and token from the environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.nodes import kvmtimer_command, wait_for_log_event
from tests.support.wait import until_sync

pytestmark = pytest.mark.e2e

TOKEN = "loopback-e2e-token"


def environ(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVMTIMER_")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def tls(pki: Path, name: str) -> dict[str, str]:
    return {
        "KVMTIMER_TLS_CERT": str(pki / f"{name}.crt"),
        "KVMTIMER_TLS_KEY": str(pki / f"{name}.key"),
        "KVMTIMER_TLS_CA": str(pki / "ca.crt"),
    }


@contextlib.contextmanager
def process(args: Sequence[str], env: Mapping[str, str], ready: str) -> Iterator[dict[str, Any]]:
    """Start `kvmtimer ARGS`; yield its `ready` log record; SIGTERM it at the end."""
    proc = subprocess.Popen(
        [*kvmtimer_command(), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=environ(env),
    )
    try:
        yield wait_for_log_event(proc, ready)
    except BaseException:
        proc.send_signal(signal.SIGTERM)
        assert proc.stderr is not None
        print(f"--- kvmtimer {args[0]} log ---\n{proc.stderr.read()}")
        raise
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return int(resp.status)


def test_secure_cluster_on_loopback(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    made = subprocess.run(
        [*kvmtimer_command(), "certs", "--out", str(pki), "--node", "env-node", "--node", "file-node"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr

    bad = subprocess.run(
        [*kvmtimer_command(), "node"],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ({"KVMTIMER_ECV": "7"}),
    )
    assert bad.returncode == 2 and "KVMTIMER_ECV: '7' is not one of 0, 1, 2" in bad.stderr

    env_node = {
        "KVMTIMER_NODE_ID": "env-node",
        "KVMTIMER_ECV": "2",
        "KVMTIMER_VHE": "1",
        "KVMTIMER_API_PROFILE": "VM_COUNTER_OFFSET",
        "KVMTIMER_LISTEN": "127.0.0.1:0",
        "KVMTIMER_HEALTH_LISTEN": "127.0.0.1:0",
        **tls(pki, "env-node"),
    }
    with process(["node"], env_node, "node_listening") as a:
        assert a["security"] == "mtls(clients=controller)" and (a["ecv"], a["vhe"]) == (2, True)
        assert health(f"127.0.0.1:{a['health_port']}") == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:  # the service port wants a certificate
            health(f"127.0.0.1:{a['port']}")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE

        controller_env = {
            "KVMTIMER_TOKEN": TOKEN,
            "KVMTIMER_HEALTH_LISTEN": "127.0.0.1:0",
            **tls(pki, "controller"),
        }
        args = ["controller", "--listen", "127.0.0.1:0", "--discover-dns", f"localhost:{a['port']}"]
        args += ["--discover-interval", "0.5"]
        with process(args, controller_env, "controller_listening") as ctl:
            assert ctl["security"] == "mtls+token"
            assert health(f"127.0.0.1:{ctl['health_port']}") == health_pb2.HealthCheckResponse.SERVING
            controller = f"127.0.0.1:{ctl['port']}"
            config = tmp_path / "file-node.yaml"
            config.write_text(
                "node:\n  node-id: file-node\n  ecv: 0\n  api-profile: VCPU_OFFSETS\n  listen: 127.0.0.1:0\n"
                f"  register-with: {controller}\n  register-interval: 0.5\n"
                + "".join(
                    f"  {k.removeprefix('KVMTIMER_').lower()}: {v}\n"
                    for k, v in tls(pki, "file-node").items()
                )
            )
            with process(["node", "--config", str(config)], {"KVMTIMER_TOKEN": TOKEN}, "node_listening") as b:
                assert b["advertise"] == f"127.0.0.1:{b['port']}"
                client = {"KVMTIMER_CONTROLLER": controller, "KVMTIMER_TOKEN": TOKEN, **tls(pki, "client")}

                def cli(*argv: str) -> Any:
                    done = subprocess.run(
                        [*kvmtimer_command(), *argv, "--output", "json"],
                        capture_output=True,
                        text=True,
                        timeout=60,
                        env=environ(client),
                    )
                    assert done.returncode == 0, done.stderr
                    return json.loads(done.stdout)

                until_sync(
                    lambda: sorted(n["node_id"] for n in cli("nodes")["nodes"]) == ["env-node", "file-node"],
                    timeout_s=20,
                    poll_s=0.3,
                    what="both nodes registered",
                )
                addresses = {n["node_id"]: n["address"] for n in cli("nodes")["nodes"]}
                assert addresses["file-node"] == f"127.0.0.1:{b['port']}"  # registered itself
                assert addresses["env-node"].endswith(f":{a['port']}")  # found in DNS
                cli("create-guest", "--id", "g", "--node", "env-node", "--ptimer")
                for dst in ("file-node", "env-node"):
                    # file-node runs the 2021 series: its kernel cannot carry the ptimer state.
                    moved = cli("migrate", "g", "--to", dst, "--allow-state-loss")
                    assert moved["phase"] == "MIGRATION_PHASE_SUCCEEDED", moved
                    assert moved["not_carried"] == ["PTIMER_CTL", "PTIMER_CVAL"], moved
