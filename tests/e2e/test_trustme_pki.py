"""Certificates from an issuer this project did not write (trustme), used by real processes.

Set-up: a trustme root CA and an intermediate CA below it (as cert-manager or a corporate PKI
would issue them: leaf files carry their chain); node certificates `n1`/`n2`, a `controller`
certificate and a `client` certificate, each with its name as a DNS SAN and no CN. Covers: the
nodes serve mutual TLS with them and accept the controller's certificate by its SAN; the
controller serves the client commands with them and reaches both nodes; a guest created and
migrated both ways through the client commands; the `client` certificate refused by a node
(PERMISSION_DENIED: right CA, wrong name).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from kvmtimer.v1 import node_pb2, node_pb2_grpc

from node.runtime import tls
from tests.support.nodes import kvmtimer_command, kvmtimer_process, wait_for_log_event

pytestmark = pytest.mark.e2e


def issue(pki: Path) -> None:
    root = trustme.CA(organization_name="trustme outside CA")
    issuer = root.create_child_ca()
    root.cert_pem.write_to_path(str(pki / "ca.crt"))
    for name in ("n1", "n2", "controller", "client"):
        leaf = issuer.issue_cert(name, "localhost", "127.0.0.1")
        with open(pki / f"{name}.crt", "wb") as out:  # leaf first, then the intermediate
            for blob in leaf.cert_chain_pems:
                out.write(blob.bytes())
        leaf.private_key_pem.write_to_path(str(pki / f"{name}.key"))


def flags(pki: Path, name: str) -> list[str]:
    cert, key, ca = (str(pki / f) for f in (f"{name}.crt", f"{name}.key", "ca.crt"))
    return ["--tls-cert", cert, "--tls-key", key, "--tls-ca", ca]


def test_trustme_certificates_everywhere(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    issue(pki)
    base = ["--listen", "127.0.0.1:0"]
    with (
        kvmtimer_process("node", [*base, "--node-id", "n1", "--ecv", "2", "--vhe", *flags(pki, "n1")]) as p1,
        kvmtimer_process(
            "node", [*base, "--node-id", "n2", "--api-profile", "VCPU_OFFSETS", *flags(pki, "n2")]
        ) as p2,
    ):
        ports = [wait_for_log_event(p, "node_listening")["port"] for p in (p1, p2)]
        nodes = [f"--node=n{i + 1}=localhost:{port}" for i, port in enumerate(ports)]
        ctl_args = ["--listen", "127.0.0.1:0", "--health-interval", "0", *nodes, *flags(pki, "controller")]
        with kvmtimer_process("controller", ctl_args) as ctl_proc:
            record = wait_for_log_event(ctl_proc, "controller_listening")
            assert record["security"] == "mtls"
            controller = f"localhost:{record['port']}"
            env = {k: v for k, v in os.environ.items() if not k.startswith("KVMTIMER_")}

            def cli(*argv: str) -> Any:
                done = subprocess.run(
                    [
                        *kvmtimer_command(),
                        *argv,
                        "--controller",
                        controller,
                        *flags(pki, "client"),
                        "--output",
                        "json",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    env=env,
                )
                assert done.returncode == 0, done.stderr
                return json.loads(done.stdout)

            listed = cli("nodes")["nodes"]
            assert sorted((n["node_id"], n["healthy"]) for n in listed) == [("n1", True), ("n2", True)]
            cli("create-guest", "--id", "g", "--node", "n1")
            for destination in ("n2", "n1"):
                moved = cli("migrate", "g", "--to", destination)
                assert moved["phase"] == "MIGRATION_PHASE_SUCCEEDED", moved

        # Right CA, wrong name: the CLI's certificate may not drive a node.
        creds = tls.channel_credentials(tls.TlsFiles(pki / "client.crt", pki / "client.key", pki / "ca.crt"))
        with grpc.secure_channel(f"localhost:{ports[0]}", creds) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                node_pb2_grpc.NodeStub(channel).GetHostInfo(node_pb2.GetHostInfoRequest(), timeout=10)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
