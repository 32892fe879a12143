"""`kvmtimer node --register-with CONTROLLER`: a node announces itself to the controller.

The node calls `Controller.RegisterNode(node_id, advertised address)` when it starts serving and
again every --register-interval seconds, so a restarted controller learns it again. Registering
a node the controller already knows at the same address keeps the controller's connection.
Failures are logged and retried with a back-off; they never stop the node.
"""

from __future__ import annotations

import argparse
import asyncio

import grpc
import structlog
from kvmtimer.v1 import controller_pb2 as cpb
from kvmtimer.v1 import controller_pb2_grpc as cpb_grpc

from node.runtime import secret_files, tls
from node.runtime.backoff import Backoff

log = structlog.get_logger("kvmtimer.node")

DEFAULT_INTERVAL_S = 15.0
FIRST_RETRY_S = 0.5


def add_register_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--register-with",
        default=None,
        metavar="HOST:PORT",
        help="controller to register this node with (and re-register every --register-interval)",
    )
    parser.add_argument(
        "--advertise",
        default=None,
        metavar="HOST:PORT",
        help="address the controller dials (default: the listen host, or this host's FQDN, and bound port)",
    )
    parser.add_argument(
        "--register-interval",
        type=float,
        default=DEFAULT_INTERVAL_S,
        help=f"seconds between registrations (default {DEFAULT_INTERVAL_S:g})",
    )
    parser.add_argument(
        "--token", default=None, help="bearer token presented to the controller (prefer KVMTIMER_TOKEN)"
    )
    secret_files.add_file_option(parser, "token", "the bearer token")


async def register_once(
    channel: grpc.aio.Channel, node_id: str, address: str, token: str | None, timeout_s: float = 10.0
) -> cpb.NodeStatus:
    stub = cpb_grpc.ControllerStub(channel)
    metadata = tls.with_token(None, token) if token else None
    status: cpb.NodeStatus = await stub.RegisterNode(
        cpb.RegisterNodeRequest(node_id=node_id, address=address), timeout=timeout_s, metadata=metadata
    )
    return status


async def register_loop(
    controller: str,
    node_id: str,
    address: str,
    *,
    credentials: grpc.ChannelCredentials | None,
    server_name: str | None = None,
    token: str | None = None,
    interval_s: float = DEFAULT_INTERVAL_S,
) -> None:
    """Register now and every `interval_s`; runs until cancelled."""
    log_ = log.bind(node_id=node_id, controller=controller, address=address)
    backoff = Backoff(FIRST_RETRY_S, max(interval_s, FIRST_RETRY_S))
    registered = False
    async with tls.aio_channel(controller, credentials, server_name=server_name) as channel:
        while True:
            try:
                await register_once(channel, node_id, address, token)
            except grpc.aio.AioRpcError as err:
                log_.warning("node_register_failed", code=err.code().name, error=err.details() or "")
                registered = False
                await asyncio.sleep(backoff.next_s())
                continue
            if not registered:
                log_.info("node_registered_with_controller")
                registered = True
            backoff.reset()
            await asyncio.sleep(interval_s)
