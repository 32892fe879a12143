"""grpcurl, a gRPC client this project did not write, against real node and controller processes.

Covers: both services listed and described through server reflection (every RPC of the
contract present); GetHostInfo answering with the node's flags; a SetOneReg on an unknown
register id failing NotFound with the `kvm-errno: ENOENT` trailer grpcurl prints; the controller
listing the node it was given; the same over mutual TLS with the certificates of `kvmtimer
certs` (controller certificate accepted by the node, client certificate refused with
PermissionDenied, a missing bearer token refused by the controller with Unauthenticated).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from kvmtimer.v1 import controller_pb2, node_pb2

from tests.support.nodes import kvmtimer_command, kvmtimer_process, wait_for_log_event
from tests.support.outside import require_tool

pytestmark = pytest.mark.e2e

NODE = node_pb2.DESCRIPTOR.services_by_name["Node"]
CONTROLLER = controller_pb2.DESCRIPTOR.services_by_name["Controller"]
TOKEN = "grpcurl-token"
UNKNOWN_SYSREG = 0x6030_0000_0013_DF1F  # a KVM_REG_ARM64 sysreg id with no register: ENOENT (case 29)
PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto"
# grpcurl exits 64 + the gRPC status code when the call fails
EXIT_NOT_FOUND, EXIT_PERMISSION_DENIED, EXIT_UNAUTHENTICATED = 64 + 5, 64 + 7, 64 + 16


def grpcurl(
    address: str, *after: str, flags: Sequence[str] = (), tls: Sequence[str] = ("-plaintext",)
) -> subprocess.CompletedProcess[str]:
    """`grpcurl TLS FLAGS ADDRESS AFTER...` (verb and symbol, or the method to call)."""
    return subprocess.run(
        [require_tool("grpcurl"), *tls, *flags, address, *after], capture_output=True, text=True, timeout=60
    )


def call_ok(
    address: str, *after: str, flags: Sequence[str] = (), tls: Sequence[str] = ("-plaintext",)
) -> str:
    done = grpcurl(address, *after, flags=flags, tls=tls)
    assert done.returncode == 0, done.stderr
    return done.stdout


def from_protos(name: str) -> list[str]:
    """grpcurl flags to use our .proto files instead of reflection."""
    return ["-import-path", str(PROTO_ROOT), "-proto", f"kvmtimer/v1/{name}.proto"]


def check_reflection(address: str, tls: Sequence[str]) -> None:
    """Both kvmtimer services' contract through reflection, as grpcurl sees it."""
    listed = call_ok(address, "list", tls=tls).split()
    assert "grpc.health.v1.Health" in listed and "grpc.reflection.v1alpha.ServerReflection" in listed
    for service in (NODE, CONTROLLER):
        if service.full_name not in listed:
            continue
        described = call_ok(address, "describe", service.full_name, tls=tls)
        assert f"{service.full_name} is a service:" in described
        for method in service.methods:
            assert f"rpc {method.name} (" in described, (method.name, described)


def check_node(address: str, node_id: str, tls: Sequence[str]) -> None:
    check_reflection(address, tls)
    assert NODE.full_name in call_ok(address, "list", tls=tls).split()
    info = json.loads(call_ok(address, f"{NODE.full_name}/GetHostInfo", flags=["-d", "{}"], tls=tls))
    assert (
        info["node_id"] == node_id
        and info["ecv"] == 2
        and info["api_profile"] == "API_PROFILE_VM_COUNTER_OFFSET"
    )
    assert int(info["cntfrq_hz"]) == 25_000_000 and int(info["host_counter"]) > 0
    vm = f"vm-{len(tls)}"
    call_ok(address, f"{NODE.full_name}/CreateVm", flags=["-d", json.dumps({"vmId": vm})], tls=tls)
    vcpu = json.dumps({"vmId": vm, "vcpuIndex": 0})
    call_ok(address, f"{NODE.full_name}/CreateVcpu", flags=["-d", vcpu], tls=tls)
    bad = json.dumps({"vmId": vm, "vcpuIndex": 0, "regId": str(UNKNOWN_SYSREG), "value": "1"})
    failed = grpcurl(address, f"{NODE.full_name}/SetOneReg", flags=["-v", "-d", bad], tls=tls)
    assert failed.returncode == EXIT_NOT_FOUND, (failed.stdout, failed.stderr)
    trailers = failed.stdout.partition("Response trailers received:")[2]
    assert "kvm-errno: ENOENT" in trailers, failed.stdout
    assert "Code: NotFound" in failed.stderr + failed.stdout


def test_grpcurl_plaintext() -> None:
    require_tool("grpcurl")
    node_args = ["--node-id", "n1", "--ecv", "2", "--vhe", "--clock", "simulated"]
    with kvmtimer_process("node", ["--listen", "127.0.0.1:0", *node_args]) as node_proc:
        node_port = wait_for_log_event(node_proc, "node_listening")["port"]
        node = f"127.0.0.1:{node_port}"
        check_node(node, "n1", ("-plaintext",))
        ctl_args = ["--listen", "127.0.0.1:0", "--health-interval", "0", "--node", f"n1={node}"]
        with kvmtimer_process("controller", ctl_args) as ctl_proc:
            ctl = f"127.0.0.1:{wait_for_log_event(ctl_proc, 'controller_listening')['port']}"
            check_reflection(ctl, ("-plaintext",))
            assert CONTROLLER.full_name in call_ok(ctl, "list").split()
            nodes = json.loads(call_ok(ctl, f"{CONTROLLER.full_name}/ListNodes", flags=["-d", "{}"]))["nodes"]
            assert [(n["node_id"], n["address"], n["healthy"]) for n in nodes] == [("n1", node, True)]
            missing = grpcurl(ctl, f"{CONTROLLER.full_name}/GetGuest", flags=["-d", '{"guestId": "nope"}'])
            assert missing.returncode == EXIT_NOT_FOUND, missing.stderr


def test_grpcurl_mutual_tls(tmp_path: Path) -> None:
    require_tool("grpcurl")
    pki = tmp_path / "pki"
    made = subprocess.run(
        [*kvmtimer_command(), "certs", "--out", str(pki), "--node", "n1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr

    def creds(name: str) -> list[str]:
        return [
            "-cacert",
            str(pki / "ca.crt"),
            "-cert",
            str(pki / f"{name}.crt"),
            "-key",
            str(pki / f"{name}.key"),
        ]

    def server_tls(name: str) -> list[str]:
        cert, key, ca = (str(pki / f) for f in (f"{name}.crt", f"{name}.key", "ca.crt"))
        return ["--tls-cert", cert, "--tls-key", key, "--tls-ca", ca]

    node_args = ["--listen", "127.0.0.1:0", "--node-id", "n1", "--ecv", "2", "--vhe", "--clock", "simulated"]
    with kvmtimer_process("node", [*node_args, *server_tls("n1")]) as node_proc:
        record = wait_for_log_event(node_proc, "node_listening")
        assert record["security"] == "mtls(clients=controller)"
        node = f"127.0.0.1:{record['port']}"
        check_node(node, "n1", creds("controller"))
        # from the .proto files (reflection is refused to this certificate as well)
        protos = [*from_protos("node"), "-d", "{}"]
        refused = grpcurl(node, f"{NODE.full_name}/GetHostInfo", flags=protos, tls=creds("client"))
        assert refused.returncode == EXIT_PERMISSION_DENIED, refused.stderr
        plain = grpcurl(node, "list")
        assert plain.returncode != 0  # no certificate, no service

        ctl_args = ["--listen", "127.0.0.1:0", "--health-interval", "0", "--node", f"n1={node}"]
        with kvmtimer_process(
            "controller", [*ctl_args, "--token", TOKEN, *server_tls("controller")]
        ) as ctl_proc:
            ctl = f"127.0.0.1:{wait_for_log_event(ctl_proc, 'controller_listening')['port']}"
            bearer = ["-H", f"authorization: Bearer {TOKEN}"]
            check_reflection(ctl, [*creds("client"), *bearer])
            nodes = json.loads(
                call_ok(
                    ctl, f"{CONTROLLER.full_name}/ListNodes", flags=[*bearer, "-d", "{}"], tls=creds("client")
                )
            )["nodes"]
            assert [(n["node_id"], n["healthy"]) for n in nodes] == [("n1", True)]
            protos = [*from_protos("controller"), "-d", "{}"]
            no_token = grpcurl(ctl, f"{CONTROLLER.full_name}/ListNodes", flags=protos, tls=creds("client"))
            assert no_token.returncode == EXIT_UNAUTHENTICATED, no_token.stderr
