"""Transport security shared by every kvmtimer gRPC server and client.

Policy (issue 6): every server speaks mutual TLS (the client must present a certificate signed by
the cluster CA) unless it listens on loopback or `--insecure` was given; a plaintext listener on
any other address is a configuration error. On top of the TLS handshake two server interceptors
decide who may call what:

* `PeerNameInterceptor`: the client certificate's common name or a subject alternative name must
  be in an allow list (nodes accept only the controller's certificate by default), else
  PERMISSION_DENIED;
* `BearerTokenInterceptor`: an `authorization: Bearer <token>` header must carry the configured
  token (the controller's optional check for CLI clients), else UNAUTHENTICATED.

The standard health service is exempt from both, so the controller's health loop and probes
that carry no credentials keep working; it reveals only SERVING/NOT_SERVING.
"""

from __future__ import annotations

import argparse
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health

from node.runtime.addr import is_loopback
from node.runtime.rpc import Behaviour, response_items, rewrap_handler

# grpc's classes are generic only in its type stubs.
if TYPE_CHECKING:
    UnaryUnaryClientInterceptor = grpc.UnaryUnaryClientInterceptor[Any, Any]
    UnaryStreamClientInterceptor = grpc.UnaryStreamClientInterceptor[Any, Any]
    ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    UnaryUnaryClientInterceptor = grpc.UnaryUnaryClientInterceptor
    UnaryStreamClientInterceptor = grpc.UnaryStreamClientInterceptor
    ServerInterceptor = grpc.aio.ServerInterceptor

HEALTH_PREFIX = f"/{health.SERVICE_NAME}/"
AUTHORIZATION = "authorization"
BEARER = "Bearer "
DEFAULT_NODE_CLIENTS = ("controller",)


class TlsConfigError(Exception):
    """A TLS setting is missing, unreadable or forbids the requested plaintext listener."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files of one component: its certificate chain, its private key and the cluster CA."""

    cert: Path  # this component's certificate (chain), PEM
    key: Path  # its private key, PEM
    ca: Path  # CA bundle that signed the peers' certificates, PEM

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(cert, key, ca) bytes; raises TlsConfigError naming the file that cannot be read."""
        out: list[bytes] = []
        for what, path in (("--tls-cert", self.cert), ("--tls-key", self.key), ("--tls-ca", self.ca)):
            try:
                out.append(path.read_bytes())
            except OSError as err:
                raise TlsConfigError(f"cannot read {what} {path}: {err.strerror}") from None
        return out[0], out[1], out[2]


def tls_files(cert: str | None, key: str | None, ca: str | None) -> TlsFiles | None:
    """All three files, or none of them (plaintext); anything in between is an error."""
    given = {"--tls-cert": cert, "--tls-key": key, "--tls-ca": ca}
    if not any(given.values()):
        return None
    missing = [flag for flag, value in given.items() if not value]
    if missing:
        raise TlsConfigError(f"mutual TLS needs --tls-cert, --tls-key and --tls-ca; missing {missing}")
    assert cert and key and ca
    return TlsFiles(Path(cert), Path(key), Path(ca))


def check_plaintext_allowed(address: str, tls: TlsFiles | None, insecure: bool, *, what: str) -> None:
    """Refuse a plaintext listener or connection off loopback unless `--insecure` asked for it."""
    if tls is None and not insecure and not is_loopback(address):
        raise TlsConfigError(
            f"{what} {address} is not a loopback address: give --tls-cert/--tls-key/--tls-ca "
            "for mutual TLS, or --insecure to use plaintext anyway"
        )


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    """Server side of mutual TLS: clients must present a certificate signed by the CA."""
    cert, key, ca = tls.read()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


def channel_credentials(tls: TlsFiles) -> grpc.ChannelCredentials:
    """Client side of mutual TLS: verify the server against the CA and present our certificate."""
    cert, key, ca = tls.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def channel_options(server_name: str | None) -> list[tuple[str, Any]]:
    """`server_name` checks the server certificate against that name instead of the target host."""
    return [("grpc.ssl_target_name_override", server_name)] if server_name else []


def aio_channel(
    address: str, credentials: grpc.ChannelCredentials | None, *, server_name: str | None = None
) -> grpc.aio.Channel:
    """A grpc.aio channel, secure when `credentials` is given."""
    if credentials is None:
        return grpc.aio.insecure_channel(address)
    return grpc.aio.secure_channel(address, credentials, options=channel_options(server_name))


# --- client-side bearer token ----------------------------------------------------------------


def with_token(metadata: Sequence[tuple[str, str | bytes]] | None, token: str) -> list[tuple[str, Any]]:
    return [*(metadata or ()), (AUTHORIZATION, BEARER + token)]


class _SyncTokenInterceptor(UnaryUnaryClientInterceptor, UnaryStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call of a blocking channel."""

    def __init__(self, token: str) -> None:
        self.token = token

    def _details(self, details: Any) -> Any:
        return _CallDetails(
            details.method,
            details.timeout,
            with_token(details.metadata, self.token),
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


def sync_channel(
    address: str,
    tls: TlsFiles | None,
    token: str | None = None,
    *,
    server_name: str | None = None,
) -> grpc.Channel:
    """A blocking channel for CLI clients: mutual TLS when `tls` is given, the token on every call."""
    channel = (
        grpc.secure_channel(address, channel_credentials(tls), options=channel_options(server_name))
        if tls is not None
        else grpc.insecure_channel(address)
    )
    return grpc.intercept_channel(channel, _SyncTokenInterceptor(token)) if token else channel


# --- server-side checks ------------------------------------------------------------------------

Check = Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[None]]


def _guard(handler: grpc.RpcMethodHandler[Any, Any], check: Check) -> grpc.RpcMethodHandler[Any, Any]:
    """The same handler with `check(context)` run before its behaviour (all four RPC shapes)."""

    def unary_response(behaviour: Behaviour) -> Behaviour:
        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await check(context)
            return await behaviour(request, context)

        return guarded

    def stream_response(behaviour: Behaviour) -> Behaviour:
        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            await check(context)
            async for item in response_items(behaviour(request, context)):
                yield item

        return guarded

    return rewrap_handler(handler, unary_response=unary_response, stream_response=stream_response)


def peer_names(context: grpc.aio.ServicerContext[Any, Any]) -> set[str]:
    """Common name and subject alternative names of the client certificate (empty without TLS)."""
    auth: Mapping[str, Iterable[bytes]] = context.auth_context()
    names: set[str] = set()
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        names.update(v.decode(errors="replace") for v in auth.get(key, ()))
    return names


class PeerNameInterceptor(ServerInterceptor):
    """Only clients whose certificate names one of `allowed` (CN or SAN) may call; else PERMISSION_DENIED.

    Precondition: the server uses mutual TLS (`server_credentials`). Without TLS there is no peer
    certificate, so every call except health is refused.
    """

    def __init__(self, allowed: Iterable[str]) -> None:
        self.allowed = frozenset(allowed)

    async def _check(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        names = peer_names(context)
        if not names & self.allowed:
            shown = ", ".join(sorted(names)) or "none (no client certificate)"
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"client certificate names {shown}; this server accepts only {sorted(self.allowed)}",
            )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(HEALTH_PREFIX):
            return handler
        return _guard(handler, self._check)


class BearerTokenInterceptor(ServerInterceptor):
    """Every call except health must carry `authorization: Bearer <token>`; else UNAUTHENTICATED."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("empty token")
        self._expected = (BEARER + token).encode()

    def verdict(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
        """None when the token is right, else the reason for the refusal."""
        values = [v for k, v in metadata or () if k == AUTHORIZATION]
        if not values:
            return "missing bearer token (authorization metadata); pass --token or set KVMTIMER_TOKEN"
        given = values[0].encode() if isinstance(values[0], str) else values[0]
        if not hmac.compare_digest(given, self._expected):
            return "invalid bearer token"
        return None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(HEALTH_PREFIX):
            return handler
        reason = self.verdict(handler_call_details.invocation_metadata)
        if reason is None:
            return handler

        async def refuse(context: grpc.aio.ServicerContext[Any, Any]) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

        return _guard(handler, refuse)


# --- command-line options ----------------------------------------------------------------------


def add_tls_arguments(parser: argparse.ArgumentParser, *, server: bool) -> None:
    """--tls-cert/--tls-key/--tls-ca and --insecure (servers: listener; clients: connection)."""
    del server  # the same options on both sides: servers also dial (registration, nodes)
    parser.add_argument(
        "--tls-cert", default=None, metavar="FILE", help="PEM certificate this process presents (mutual TLS)"
    )
    parser.add_argument("--tls-key", default=None, metavar="FILE", help="PEM private key of --tls-cert")
    parser.add_argument(
        "--tls-ca",
        default=None,
        metavar="FILE",
        help="PEM CA bundle that must have signed the peer's certificate",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow plaintext gRPC on a non-loopback address (default: refused without TLS)",
    )
    parser.add_argument(
        "--tls-server-name",
        default=None,
        metavar="NAME",
        help="expect this name in the peer server's certificate instead of the dialled host",
    )


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """The options of `add_tls_arguments`."""

    tls_cert: str | None  # --tls-cert: this process's certificate (chain), PEM
    tls_key: str | None  # --tls-key: its private key
    tls_ca: str | None  # --tls-ca: CA bundle that signed the peers
    insecure: bool  # --insecure: plaintext allowed off loopback
    tls_server_name: str | None  # --tls-server-name: name expected in the peer server's certificate

    def files(self) -> TlsFiles | None:
        """The three PEM files, or None for plaintext; TlsConfigError when only some are given."""
        return tls_files(self.tls_cert, self.tls_key, self.tls_ca)
