"""`kvmtimer certs`: a private CA and the certificates of every component, for mutual TLS.

Writes into --out (created, mode 0700; keys 0600):

    ca.crt ca.key                    the cluster CA (keep ca.key offline in production)
    controller.crt controller.key    CN=controller: server for clients, client of the nodes
    client.crt client.key            CN=client: for `kvmtimer` client commands (client auth only)
    NAME.crt NAME.key                one per --node NAME[=SAN,...] (CN=NAME, server and client auth)

Every server certificate also names localhost, 127.0.0.1 and ::1 so the same files work on one
machine. On Kubernetes pass --namespace: the controller certificate then names its Service, and
`--node NAME` certificates name every pod behind the headless node Service (a wildcard), so one
Secret serves a whole StatefulSet.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CONTROLLER_NAME = "controller"
CLIENT_NAME = "client"
CONTROLLER_SERVICE = "kvmtimer-controller"
NODE_SERVICE = "kvmtimer-node"
LOOPBACK_SANS = ("localhost", "127.0.0.1", "::1")
Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class Issued:
    """One certificate and its key, PEM encoded."""

    name: str  # file stem and common name
    cert_pem: bytes  # certificate, PEM
    key_pem: bytes  # private key, PEM (PKCS#8, unencrypted)


@dataclass(frozen=True, slots=True)
class Request:
    """What to issue: a common name, its SANs and whether it may serve."""

    name: str  # common name and file stem
    sans: tuple[str, ...] = ()  # DNS names or IP addresses
    server: bool = True  # serverAuth as well as clientAuth


def _key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(value: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        return x509.DNSName(value)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kvmtimer"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def make_ca(days: int = 3650, *, now: datetime.datetime | None = None) -> tuple[Issued, Key]:
    """A self-signed CA (path length 0)."""
    now = now or datetime.datetime.now(datetime.UTC)
    key = _key()
    name = _name("kvmtimer CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued("ca", cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)), key


def issue(
    ca: Issued, ca_key: Key, request: Request, days: int = 365, *, now: datetime.datetime | None = None
) -> Issued:
    """A leaf certificate for `request`, signed by the CA."""
    now = now or datetime.datetime.now(datetime.UTC)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    key = _key()
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if request.server:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    sans = list(dict.fromkeys((request.name, *request.sans)))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(request.name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName([_san(s) for s in sans]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return Issued(request.name, cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def kubernetes_sans(namespace: str, service: str, *, wildcard: bool) -> tuple[str, ...]:
    """DNS names of a Service (or, with `wildcard`, of every pod behind a headless Service)."""
    prefix = "*." if wildcard else ""
    base = f"{service}.{namespace}"
    names = [f"{prefix}{base}.svc", f"{prefix}{base}.svc.cluster.local"]
    if not wildcard:
        names = [service, base, *names]
    return tuple(names)


def node_request(spec: str, namespace: str | None) -> Request:
    """--node NAME[=SAN,SAN...]."""
    name, _, sans = spec.partition("=")
    extra = tuple(s for s in sans.split(",") if s)
    if namespace:
        extra += kubernetes_sans(namespace, NODE_SERVICE, wildcard=True)
    return Request(name, (*extra, *LOOPBACK_SANS))


def requests(nodes: Sequence[str], controller_sans: Sequence[str], namespace: str | None) -> list[Request]:
    controller_extra = tuple(controller_sans)
    if namespace:
        controller_extra += kubernetes_sans(namespace, CONTROLLER_SERVICE, wildcard=False)
    out = [
        Request(CONTROLLER_NAME, (*controller_extra, *LOOPBACK_SANS)),
        Request(CLIENT_NAME, (), server=False),
    ]
    out += [node_request(spec, namespace) for spec in nodes]
    names = [r.name for r in out]
    duplicates = sorted({n for n in names if names.count(n) > 1} | ({"ca"} & set(names)))
    if duplicates:
        raise ValueError(f"certificate names must be unique and not 'ca': {duplicates}")
    return out


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def write_bundle(out: Path, issued: Sequence[Issued]) -> list[Path]:
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    written = []
    for item in issued:
        for suffix, data, mode in ((".crt", item.cert_pem, 0o644), (".key", item.key_pem, 0o600)):
            path = out / f"{item.name}{suffix}"
            _write(path, data, mode)
            written.append(path)
    return written


def generate(
    out: Path,
    *,
    nodes: Sequence[str] = (),
    controller_sans: Sequence[str] = (),
    namespace: str | None = None,
    days: int = 365,
) -> list[Path]:
    """Issue the CA, the controller, client and node certificates into `out`; returns the files."""
    reqs = requests(nodes, controller_sans, namespace)
    ca, ca_key = make_ca(days=max(days, 3650))
    return write_bundle(out, [ca, *(issue(ca, ca_key, r, days) for r in reqs)])


def add_certs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="directory to write the PEM files into")
    parser.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="NAME[=SAN,...]",
        help="issue NAME.crt/NAME.key for a node (or a node pool), with extra DNS/IP names",
    )
    parser.add_argument(
        "--controller-san",
        action="append",
        default=[],
        metavar="SAN",
        help="extra DNS name or IP address for the controller certificate",
    )
    parser.add_argument(
        "--namespace",
        default=None,
        help=f"Kubernetes namespace: add the {CONTROLLER_SERVICE} Service and {NODE_SERVICE} pod names",
    )
    parser.add_argument("--days", type=int, default=365, help="validity of the leaf certificates")
    parser.add_argument("--force", action="store_true", help="overwrite existing files in --out")


@dataclass(frozen=True, slots=True)
class CertsSettings:
    """`kvmtimer certs`: what to issue and where."""

    out: Path  # --out directory
    node: tuple[str, ...]  # --node NAME[=SAN,...]
    controller_san: tuple[str, ...]  # --controller-san
    namespace: str | None  # --namespace (Kubernetes)
    days: int  # --days of validity
    force: bool  # --force: overwrite


def run(args: CertsSettings) -> int:
    out = args.out
    if (out / "ca.key").exists() and not args.force:
        print(f"kvmtimer certs: {out} already holds a CA; use --force to replace it", file=sys.stderr)
        return 2
    try:
        written = generate(
            out,
            nodes=args.node,
            controller_sans=args.controller_san,
            namespace=args.namespace,
            days=args.days,
        )
    except ValueError as err:
        print(f"kvmtimer certs: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0
