"""`kvmtimer node` options for real deployments: mTLS, allowed callers, probe port, self-registration.

Kept apart from node/process/main.py, which wires them in with a few lines.
"""

from __future__ import annotations

import argparse
import asyncio

from grpc_health.v1._async import HealthServicer  # health.aio, which the stubs lack

from node.process import registration
from node.process.settings import NodeSettings
from node.runtime import serving, settings, tls
from node.runtime.addr import advertise_address
from node.runtime.aio import cancel_and_wait


def add_deploy_arguments(parser: argparse.ArgumentParser) -> None:
    serving.add_server_arguments(parser, allow_default=tls.DEFAULT_NODE_CLIENTS)
    registration.add_register_arguments(parser)
    settings.add_config_argument(parser)


def security(s: NodeSettings) -> serving.ServerSecurity:
    """Raises tls.TlsConfigError on inconsistent or unreadable TLS settings."""
    if s.register_with:
        tls.check_plaintext_allowed(s.register_with, s.tls.files(), s.tls.insecure, what="--register-with")
    return serving.server_security(
        s.tls, s.listen, allowed=s.tls_allow, allow_default=tls.DEFAULT_NODE_CLIENTS
    )


class Extras:
    """The probe port and the registration loop of one node process."""

    def __init__(self, s: NodeSettings, health_servicer: HealthServicer, port: int, node_id: str) -> None:
        self.settings = s
        self.node_id = node_id
        # Only registration needs it (the FQDN look-up may wait for DNS).
        self.address = advertise_address(s.listen, port, s.advertise) if s.register_with else None
        self.health = serving.HealthPort(health_servicer, s.health_listen)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.health.start()
        a = self.settings
        if a.register_with:
            files = a.tls.files()
            self._task = asyncio.create_task(
                registration.register_loop(
                    a.register_with,
                    self.node_id,
                    self.address or "",
                    credentials=tls.channel_credentials(files) if files is not None else None,
                    server_name=a.tls.tls_server_name,
                    token=a.token,
                    interval_s=a.register_interval,
                ),
                name="register-with-controller",
            )

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        await self.health.stop()
