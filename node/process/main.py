"""`kvmtimer node`: serve one emulated arm64 KVM host over gRPC until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from node.runtime.grpc_metrics import GrpcServerMetrics

from node.core.clock import NS_PER_S, Clock, ManualClock, SystemClock
from node.core.errors import EmulatorError
from node.core.features import DEFAULT_CNTFRQ_HZ, ApiProfile, ClockMode, EcvLevel, HostFeatures
from node.core.host import Host
from node.process import deploy
from node.process.clock_settings import add_clock_effect_arguments, clock_effects_of
from node.process.settings import NodeSettings
from node.process.status import start_node_status
from node.runtime.addr import advertise_address
from node.runtime.aio import stop_on_signals
from node.runtime.logs import configure_logging
from node.runtime.metrics_http import add_metrics_argument, start_metrics
from node.runtime.mqtt import add_mqtt_arguments
from node.runtime.mqtt import mqtt_settings as mqtt_settings_of
from node.runtime.options import add_log_level_argument
from node.runtime.settings import command, defer_defaults, standalone
from node.runtime.tls import TlsConfigError
from node.service.server import build_server, mark_not_serving, mark_serving
from node.service.telemetry import TelemetryStreams

log = structlog.get_logger("kvmtimer.node")


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to serve on (port 0 = any)")
    parser.add_argument("--node-id", default="node-0", help="name of this host in the cluster")
    parser.add_argument("--cntfrq", type=int, default=DEFAULT_CNTFRQ_HZ, help="counter frequency in Hz")
    parser.add_argument("--ecv", type=int, choices=(0, 1, 2), default=0, help="ID_AA64MMFR0_EL1.ECV level")
    parser.add_argument("--vhe", action="store_true", help="host kernel runs in VHE mode (default nVHE)")
    parser.add_argument("--nv", action="store_true", help="nested virtualisation (EL2 timer PPIs)")
    parser.add_argument(
        "--api-profile",
        choices=[p.name for p in ApiProfile],
        default=ApiProfile.VM_COUNTER_OFFSET.name,
        help="kernel timer API generation",
    )
    parser.add_argument(
        "--clock", choices=("realtime", "simulated"), default="realtime", help="how the host counter moves"
    )
    parser.add_argument(
        "--counter-base",
        type=int,
        default=None,
        help="host counter at boot (default: derived from --node-id)",
    )
    add_clock_effect_arguments(parser)
    add_log_level_argument(parser)
    add_mqtt_arguments(parser)
    add_metrics_argument(parser)
    deploy.add_deploy_arguments(parser)
    defer_defaults(parser, "node")  # keep last: options added below would be flag-only


def default_counter_base(node_id: str, cntfrq_hz: int) -> int:
    """Each host booted at a different time: a stable per-name uptime between 1 and 50 days."""
    days = 1 + sum(node_id.encode()) % 50
    return days * 86_400 * cntfrq_hz


def host_from_settings(args: NodeSettings) -> Host:
    features = HostFeatures(
        cntfrq_hz=args.cntfrq,
        ecv=EcvLevel(args.ecv),
        vhe=args.vhe,
        api_profile=ApiProfile[args.api_profile],
        nv=args.nv,
    )
    mode = ClockMode.SIMULATED if args.clock == "simulated" else ClockMode.REALTIME
    # A simulated host's realtime starts at the wall clock's current whole second (on the
    # counter's tick grid at any CNTFRQ) and then moves only with its counter.
    epoch_ns = time.time_ns() // NS_PER_S * NS_PER_S
    clock: Clock = ManualClock(realtime_offset_ns=epoch_ns) if mode is ClockMode.SIMULATED else SystemClock()
    base = (
        args.counter_base
        if args.counter_base is not None
        else default_counter_base(args.node_id, args.cntfrq)
    )
    effects = clock_effects_of(args.clock_effects)
    return Host(args.node_id, features, clock, counter_base=base, clock_mode=mode, clock_effects=effects)


def node_metrics(
    host: Host, telemetry: TelemetryStreams, rpc_metrics: GrpcServerMetrics
) -> CollectorRegistry:
    """The node's Prometheus registry (imported here: only --metrics-listen needs prometheus-client)."""
    from node.service.guest_metrics import GuestMetrics
    from node.service.metrics import node_registry

    return rpc_metrics.register(GuestMetrics(host).register(node_registry(host, telemetry)))


async def serve(args: NodeSettings) -> None:
    stop = stop_on_signals()
    mqtt_settings = mqtt_settings_of(args.mqtt)  # ValueError: bad --mqtt options
    host = host_from_settings(args)
    security = deploy.security(args)  # TlsConfigError: bad TLS options or plaintext off loopback
    telemetry = TelemetryStreams()
    interceptors = tuple(security.interceptors)
    rpc_metrics = None
    if args.metrics_listen:  # per-RPC metrics only with an endpoint (prometheus-client loads here)
        from node.runtime.grpc_metrics import GrpcServerMetrics

        rpc_metrics = GrpcServerMetrics()
        interceptors = (rpc_metrics, *interceptors)
    server, port, health_servicer = build_server(
        host,
        args.listen,
        telemetry=telemetry,
        credentials=security.credentials,
        interceptors=interceptors,
    )
    extras = deploy.Extras(args, health_servicer, port, host.node_id)
    await server.start()
    metrics = (
        await start_metrics(node_metrics(host, telemetry, rpc_metrics), args.metrics_listen)
        if rpc_metrics is not None and args.metrics_listen
        else None
    )
    await mark_serving(health_servicer)
    await extras.start()  # probe port, --register-with
    f = host.features
    log.info(
        "node_listening",
        node_id=host.node_id,
        listen=args.listen,
        port=port,
        cntfrq_hz=f.cntfrq_hz,
        ecv=int(f.ecv),
        vhe=f.vhe,
        api_profile=f.api_profile.name,
        clock=args.clock,
        security=security.summary,
        health_port=extras.health.port,
        advertise=extras.address,
    )
    mqtt = await start_node_status(host, advertise_address(args.listen, port, args.advertise), mqtt_settings)
    await stop.wait()
    log.info("node_stopping", node_id=host.node_id)
    if mqtt is not None:
        await mqtt.stop()  # retained `offline` (reason "stopped") before the node goes away
    await mark_not_serving(health_servicer)
    await extras.stop()
    telemetry.close()  # telemetry streams end cleanly instead of waiting out the grace period
    await server.stop(grace=2.0)
    if metrics is not None:
        await metrics.stop()
    log.info("node_stopped", node_id=host.node_id)


def run(args: NodeSettings) -> int:
    configure_logging(args.log_level)
    try:
        asyncio.run(serve(args))
    except EmulatorError as err:
        log.error("node_bad_config", error=err.message)
        return 2
    except (ValueError, TlsConfigError) as err:  # --mqtt, --tls-* options
        log.error("node_bad_config", error=str(err))
        return 2
    return 0


run_command = command(NodeSettings, run)  # the argparse `func` of `kvmtimer node`


def main(argv: list[str] | None = None) -> int:
    return standalone("kvmtimer node", __doc__, add_node_arguments)(run_command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
