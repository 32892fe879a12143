"""`kvmtimer controller`: serve the kvmtimer.v1.Controller service until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import time

import structlog

from controller.app import deploy
from controller.app.settings import ControllerSettings
from controller.core.errors import ControllerError, Unavailable
from controller.core.migration import Limits, MigrationRecord, Step
from controller.service.cluster import Cluster
from controller.service.executor import FaultHook
from controller.service.server import build_server, mark_serving
from controller.service.store import StateFileError, Store
from controller.service.telemetry import start_controller_telemetry
from controller.telemetry.metrics import MqttMetrics, controller_registry
from node.runtime.addr import advertise_address, host_port
from node.runtime.aio import stop_on_signals
from node.runtime.grpc_metrics import GrpcServerMetrics
from node.runtime.logs import configure_logging
from node.runtime.metrics_http import add_metrics_argument, start_metrics
from node.runtime.mqtt import add_mqtt_arguments
from node.runtime.mqtt import mqtt_settings as mqtt_settings_of
from node.runtime.options import add_log_level_argument, positive_int
from node.runtime.settings import command, defer_defaults, standalone
from node.runtime.tls import TlsConfigError

log = structlog.get_logger("kvmtimer.controller")

DEFAULT_LISTEN = "127.0.0.1:7070"
REGISTER_RETRY_S = 0.25


def node_spec(value: str) -> tuple[str, str]:
    """argparse type for ID=HOST:PORT."""
    node_id, sep, address = value.partition("=")
    if not sep or not node_id:
        raise argparse.ArgumentTypeError(f"expected ID=HOST:PORT, got {value!r}")
    return node_id, host_port(address)


def add_controller_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        type=host_port,
        default=DEFAULT_LISTEN,
        help=f"HOST:PORT to serve on (default {DEFAULT_LISTEN}; port 0 = any)",
    )
    parser.add_argument(
        "--node",
        type=node_spec,
        action="append",
        default=[],
        metavar="ID=HOST:PORT",
        help="register this node at start (repeatable)",
    )
    parser.add_argument(
        "--max-parallel",
        "--parallel",
        type=positive_int,
        default=5,
        help="migrations running at once in the cluster (default 5; also --parallel)",
    )
    parser.add_argument(
        "--max-outbound",
        "--outbound-per-node",
        type=positive_int,
        default=2,
        help="migrations leaving one node at once (default 2; also --outbound-per-node)",
    )
    parser.add_argument(
        "--health-interval", type=float, default=1.0, help="seconds between node health checks (0 = off)"
    )
    parser.add_argument(
        "--register-timeout",
        type=float,
        default=10.0,
        help="keep retrying unreachable --node entries this many seconds (default 10)",
    )
    parser.add_argument(
        "--state",
        metavar="FILE",
        default=None,
        help="state file (SQLite): guests, migrations and the migration journal survive restarts "
        "(default $XDG_STATE_HOME/kvmtimer/controller.db, else ~/.local/state/kvmtimer/controller.db)",
    )
    add_log_level_argument(parser)
    add_metrics_argument(parser)
    add_mqtt_arguments(parser)
    deploy.add_deploy_arguments(parser)
    defer_defaults(parser, "controller")  # keep last: options added below would be flag-only


def default_state_path() -> str:
    """Where a local controller keeps its state unless told (XDG base directory spec)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "kvmtimer", "controller.db")


def test_fault_hook() -> FaultHook | None:
    """Test mode only (KVMTIMER_TEST_MODE=1): KVMTIMER_TEST_STOP_AT=STEP stops this process
    (SIGSTOP) right after each migration commits STEP to its journal, before the step's command
    is sent, so a fault campaign can kill whichever process it wants at exactly that point."""
    if os.environ.get("KVMTIMER_TEST_MODE") != "1" or not os.environ.get("KVMTIMER_TEST_STOP_AT"):
        return None
    step = Step(os.environ["KVMTIMER_TEST_STOP_AT"])

    async def stop_here(record: MigrationRecord, at: Step) -> None:
        if at is step:
            log.warning("test_fault_stop", migration_id=record.migration_id, step=at.value)
            os.kill(os.getpid(), signal.SIGSTOP)

    return stop_here


async def register_with_retry(cluster: Cluster, node_id: str, address: str, timeout_s: float) -> bool:
    """Register one node, retrying while it is unreachable (it may still be starting)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await cluster.register_node(node_id, address)
            return True
        except Unavailable as err:
            if time.monotonic() >= deadline:
                log.error("node_registration_failed", node_id=node_id, address=address, error=err.message)
                return False
            await asyncio.sleep(REGISTER_RETRY_S)
        except ControllerError as err:
            log.error("node_registration_failed", node_id=node_id, address=address, error=err.message)
            return False


async def serve(args: ControllerSettings) -> int:
    stop = stop_on_signals()
    try:
        security = deploy.security(args)
    except TlsConfigError as err:
        log.error("controller_bad_config", listen=args.listen, error=str(err))
        return 2
    try:
        mqtt_settings = mqtt_settings_of(args.mqtt)
    except ValueError as err:  # --mqtt options
        log.error("controller_bad_config", error=str(err))
        return 2
    state = args.state or default_state_path()
    try:
        store = Store.open(state)
    except StateFileError as err:
        log.error("controller_state_refused", state=state, error=err.message, exit_code=err.exit_code)
        return err.exit_code
    cluster = Cluster(
        limits=Limits(parallel=args.max_parallel, outbound_per_node=args.max_outbound),
        health_interval_s=args.health_interval,
        node_credentials=security.node_credentials,
        node_server_name=args.tls.tls_server_name,
        store=store,
        fault_hook=test_fault_hook(),
    )
    cluster.load_state()
    rpc_metrics = GrpcServerMetrics()
    try:
        server, port, health_servicer = build_server(
            cluster,
            args.listen,
            credentials=security.server.credentials,
            interceptors=(rpc_metrics, *security.server.interceptors),
        )
        extras = deploy.Extras(args, cluster, health_servicer)
    except RuntimeError as err:  # grpc cannot bind the address
        log.error("controller_bad_config", listen=args.listen, error=str(err))
        return 2
    registry = rpc_metrics.register(controller_registry(cluster))
    try:
        metrics = await start_metrics(registry, args.metrics_listen) if args.metrics_listen else None
    except OSError as err:  # cannot bind --metrics-listen
        log.error("controller_bad_config", metrics_listen=args.metrics_listen, error=str(err))
        return 2
    await server.start()
    await extras.start()
    # MQTT telemetry: publishing never waits for the broker (it may be down).
    mqtt = (
        start_controller_telemetry(cluster, mqtt_settings, address=advertise_address(args.listen, port))
        if mqtt_settings is not None
        else None
    )
    if mqtt is not None:
        registry.register(MqttMetrics(mqtt))
    registering = asyncio.gather(
        *(
            register_with_retry(cluster, node_id, address, args.register_timeout)
            for node_id, address in args.node
        )
    )
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait((registering, stopping), return_when=asyncio.FIRST_COMPLETED)
    if not stop.is_set():
        registered: list[bool] = registering.result()
        await cluster.recover()  # the stored nodes, then what they run against the state file
        cluster.start()
        await mark_serving(health_servicer)
        log.info(
            "controller_listening",
            listen=args.listen,
            port=port,
            nodes=sorted(cluster.nodes),
            unregistered=[node_id for (node_id, _), ok in zip(args.node, registered, strict=True) if not ok],
            max_parallel=args.max_parallel,
            max_outbound=args.max_outbound,
            security=security.server.summary,
            health_port=extras.health.port,
            discover_dns=args.discover_dns,
            state=state,
            guests=len(cluster.guests),
        )
    await stopping
    registering.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await registering
    log.info(
        "controller_stopping", migrations_in_flight=sum(1 for g in cluster.guests.values() if g.migrating)
    )
    await health_servicer.enter_graceful_shutdown()
    # In-flight migrations finish (or roll back) first; the event hub closes, ending watch streams.
    await extras.stop()
    await cluster.stop()
    if mqtt is not None:
        await mqtt.stop()  # after the hub closed: flush, then the retained `offline` (reason "stopped")
    await server.stop(grace=2.0)
    if metrics is not None:
        await metrics.stop()
    log.info("controller_stopped")
    return 0


def run(args: ControllerSettings) -> int:
    configure_logging(args.log_level)
    return asyncio.run(serve(args))


run_command = command(ControllerSettings, run)  # the argparse `func` of `kvmtimer controller`


def main(argv: list[str] | None = None) -> int:
    return standalone("kvmtimer controller", __doc__, add_controller_arguments)(run_command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
