"""What a deployed node or controller server needs besides its service: TLS, auth, a probe port.

* Security: `server_security` turns --tls-*/--insecure/--tls-allow/--token into server credentials
  and interceptors, enforcing the plaintext rule of node.runtime.tls.
* Probe port: Kubernetes' native gRPC probes cannot present a client certificate, so with mutual
  TLS on the service port the standard health service is also served in plaintext on
  `--health-listen` (that server carries nothing but grpc.health.v1.Health).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1._async import HealthServicer  # health.aio, which the stubs lack

from node.runtime import secret_files, tls

Interceptor = tls.ServerInterceptor


@dataclass(frozen=True, slots=True)
class ServerSecurity:
    """How one server listens: credentials (None = plaintext) and the interceptors that check callers."""

    credentials: grpc.ServerCredentials | None  # mutual TLS, or None for plaintext
    interceptors: Sequence[Interceptor] = field(default=())  # peer-name and token checks
    summary: str = "plaintext"  # for the start-up log line


def add_server_arguments(
    parser: argparse.ArgumentParser, *, allow_default: Sequence[str] = (), token: bool = False
) -> None:
    """TLS options, the health port and (with `allow_default`) the allowed client names."""
    tls.add_tls_arguments(parser, server=True)
    if allow_default:
        parser.add_argument(
            "--tls-allow",
            action="append",
            default=None,
            metavar="NAME",
            help=(
                "client certificate name (CN or SAN) allowed to call (repeatable; default "
                f"{', '.join(allow_default)}; '*' = any certificate the CA signed)"
            ),
        )
    if token:
        parser.add_argument(
            "--token",
            default=None,
            help="require `authorization: Bearer TOKEN` from clients (prefer KVMTIMER_TOKEN)",
        )
        secret_files.add_file_option(parser, "token", "the bearer token")
    parser.add_argument(
        "--health-listen",
        default=None,
        metavar="HOST:PORT",
        help="also serve grpc.health.v1 alone, in plaintext, here (for Kubernetes gRPC probes)",
    )


def server_security(
    options: tls.TlsOptions,
    listen: str,
    *,
    allowed: Sequence[str] = (),
    allow_default: Sequence[str] = (),
    token: str | None = None,
) -> ServerSecurity:
    """Credentials and interceptors from the options; raises tls.TlsConfigError.

    `allowed` (--tls-allow, else `allow_default`): client certificate names that may call.
    `token`: require it from callers (a node's --token is what it presents instead: pass None).
    """
    files = options.files()
    tls.check_plaintext_allowed(listen, files, options.insecure, what="listen address")
    interceptors: list[Interceptor] = []
    parts = []
    if files is not None:
        allowed = list(allowed or allow_default)
        if allowed and "*" not in allowed:
            interceptors.append(tls.PeerNameInterceptor(allowed))
            parts.append(f"mtls(clients={','.join(allowed)})")
        else:
            parts.append("mtls")
    else:
        parts.append("plaintext")
    if token:
        interceptors.append(tls.BearerTokenInterceptor(token))
        parts.append("token")
    credentials = tls.server_credentials(files) if files is not None else None
    return ServerSecurity(credentials, tuple(interceptors), "+".join(parts))


def build_health_server(health_servicer: HealthServicer, addr: str) -> tuple[grpc.aio.Server, int]:
    """A plaintext server with only the health service (sharing the main server's status)."""
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(addr)
    return server, port


class HealthPort:
    """The optional plaintext probe server of --health-listen."""

    def __init__(self, health_servicer: HealthServicer, addr: str | None) -> None:
        self.server: grpc.aio.Server | None = None
        self.port: int | None = None
        if addr:
            self.server, self.port = build_health_server(health_servicer, addr)

    async def start(self) -> None:
        if self.server is not None:
            await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=1.0)
