"""`kvmtimer certs` (controller/cli/certs.py): the CA and component certificates for mutual TLS.

Edge cases: every leaf is signed by the CA and carries the right key usages (client-only for the
CLI client, server and client for controller and nodes); SANs of loopback, extra names (DNS and
IP) and the Kubernetes Service and pod wildcard names; private keys written 0600 in a 0700
directory; duplicate names and the reserved name 'ca' refused; an existing CA kept without
--force; the command-line entry point.
"""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controller.cli import certs, main


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def sans(cert: x509.Certificate) -> set[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {*ext.get_values_for_type(x509.DNSName), *map(str, ext.get_values_for_type(x509.IPAddress))}


def usages(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_bundle(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    written = certs.generate(
        out, nodes=["node-a", "pool=n.example,10.1.2.3"], controller_sans=["ctl.example"], namespace="kv"
    )
    names = sorted(p.name for p in written)
    assert names == sorted(
        f"{n}.{s}" for n in ("ca", "controller", "client", "node-a", "pool") for s in ("crt", "key")
    )
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == (0o600 if path.suffix == ".key" else 0o644)
    ca = load(out / "ca.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for name in ("controller", "client", "node-a", "pool"):
        leaf = load(out / f"{name}.crt")
        leaf.verify_directly_issued_by(ca)
        assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert usages(load(out / "client.crt")) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert usages(load(out / "pool.crt")) == {
        ExtendedKeyUsageOID.CLIENT_AUTH,
        ExtendedKeyUsageOID.SERVER_AUTH,
    }
    loopback = {"localhost", "127.0.0.1", "::1"}
    assert sans(load(out / "controller.crt")) == {
        "controller",
        "ctl.example",
        "kvmtimer-controller",
        "kvmtimer-controller.kv",
        "kvmtimer-controller.kv.svc",
        "kvmtimer-controller.kv.svc.cluster.local",
        *loopback,
    }
    assert sans(load(out / "pool.crt")) == {
        "pool",
        "n.example",
        "10.1.2.3",
        "*.kvmtimer-node.kv.svc",
        "*.kvmtimer-node.kv.svc.cluster.local",
        *loopback,
    }
    ext = load(out / "pool.crt").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("10.1.2.3") in ext.get_values_for_type(x509.IPAddress)


@pytest.mark.parametrize("nodes", [["a", "a"], ["controller"], ["ca"], ["client"]])
def test_names_must_be_unique(tmp_path: Path, nodes: list[str]) -> None:
    with pytest.raises(ValueError, match="unique"):
        certs.generate(tmp_path, nodes=nodes)


def test_command_keeps_an_existing_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pki"
    assert main(["certs", "--out", str(out), "--node", "n1"]) == 0
    first = (out / "ca.crt").read_bytes()
    assert "n1.crt" in capsys.readouterr().out
    assert main(["certs", "--out", str(out)]) == 2
    assert "already holds a CA" in capsys.readouterr().err
    assert (out / "ca.crt").read_bytes() == first
    assert main(["certs", "--out", str(out), "--force"]) == 0
    assert (out / "ca.crt").read_bytes() != first
