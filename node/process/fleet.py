"""`kvmtimer fleet`: serve several emulated arm64 KVM hosts from one process (a local fleet).

Each host is its own `kvmtimer.v1.Node` endpoint: its own port on the loopback address, node
id, features, counter (boot time) and VMs, exactly as a `kvmtimer node` process would serve
it. The hosts follow the mix of node.core.fleet (ECV2 nVHE, ECV2 VHE, non-ECV; the three
kernel API profiles; different boot times), numbered from --first-index. What they share is
the process: one event loop, one guest timer scheduler (a heap of every host's next guest
interrupt; an idle host costs nothing) and the imports. One pod per host stays the model on
Kubernetes; this is how one machine runs a hundred hosts.

Logs `node_listening` (node_id, port) for every host, then `fleet_listening`; SIGTERM/SIGINT
stop every host cleanly (`node_stopped` for each, then `fleet_stopped`).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass

import grpc
import structlog
from grpc_health.v1._async import HealthServicer

from node.core.clock import Clock, ManualClock, SystemClock
from node.core.features import ClockMode
from node.core.fleet import fleet_host
from node.core.host import Host
from node.runtime.addr import is_loopback
from node.runtime.aio import stop_on_signals
from node.runtime.logs import configure_logging
from node.runtime.options import add_log_level_argument, int_between, positive_int
from node.runtime.settings import command, standalone
from node.service.driver import TimerScheduler
from node.service.server import build_server, mark_not_serving, mark_serving
from node.service.telemetry import TelemetryStreams

MAX_HOSTS = 1000
log = structlog.get_logger("kvmtimer.node")


@dataclass(frozen=True, slots=True)
class FleetSettings:
    """One fleet process."""

    hosts: int  # --hosts: hosts served
    first_index: int  # --first-index: number of the first host (node-<index>)
    node_id_prefix: str  # --node-id-prefix
    listen_host: str  # --listen-host: loopback address every host listens on
    clock: str  # --clock: realtime | simulated
    log_level: str  # --log-level


def add_fleet_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hosts", type=int_between(1, MAX_HOSTS), default=10, metavar="N", help="hosts to serve (default 10)"
    )
    parser.add_argument(
        "--first-index",
        type=positive_int,
        default=1,
        metavar="K",
        help="number of the first host (default 1)",
    )
    parser.add_argument(
        "--node-id-prefix", default="node-", help="host ids are PREFIX<index> (default node-)"
    )
    parser.add_argument(
        "--listen-host",
        default="127.0.0.1",
        metavar="ADDR",
        help="loopback address the hosts listen on, each on its own port (default 127.0.0.1)",
    )
    parser.add_argument(
        "--clock", choices=("realtime", "simulated"), default="realtime", help="how the host counters move"
    )
    add_log_level_argument(parser)


@dataclass(slots=True)
class _Served:
    host: Host
    server: grpc.aio.Server
    port: int
    health: HealthServicer
    telemetry: TelemetryStreams


def fleet_hosts(s: FleetSettings) -> list[Host]:
    mode = ClockMode.SIMULATED if s.clock == "simulated" else ClockMode.REALTIME
    hosts = []
    for index in range(s.first_index, s.first_index + s.hosts):
        plan = fleet_host(index, s.node_id_prefix)
        clock: Clock = (
            ManualClock(realtime_offset_ns=time.time_ns()) if mode is ClockMode.SIMULATED else SystemClock()
        )
        hosts.append(
            Host(plan.node_id, plan.features, clock, counter_base=plan.counter_base, clock_mode=mode)
        )
    return hosts


async def serve(s: FleetSettings) -> None:
    stop = stop_on_signals()
    scheduler = TimerScheduler()
    served: list[_Served] = []
    for host in fleet_hosts(s):
        telemetry = TelemetryStreams()
        server, port, health = build_server(
            host, f"{s.listen_host}:0", telemetry=telemetry, scheduler=scheduler
        )
        served.append(_Served(host, server, port, health, telemetry))
    for h in served:
        await h.server.start()
        await mark_serving(h.health)
        f = h.host.features
        log.info(
            "node_listening",
            node_id=h.host.node_id,
            listen=f"{s.listen_host}:0",
            port=h.port,
            cntfrq_hz=f.cntfrq_hz,
            ecv=int(f.ecv),
            vhe=f.vhe,
            api_profile=f.api_profile.name,
            clock=s.clock,
            fleet=True,
        )
    log.info("fleet_listening", hosts=len(served), ports={h.host.node_id: h.port for h in served})
    await stop.wait()
    log.info("fleet_stopping", hosts=len(served))
    for h in served:
        await mark_not_serving(h.health)
        h.telemetry.close()
    await asyncio.gather(*(h.server.stop(grace=2.0) for h in served))
    scheduler.stop()
    for h in served:
        log.info("node_stopped", node_id=h.host.node_id)
    log.info("fleet_stopped", hosts=len(served))


def run(s: FleetSettings) -> int:
    configure_logging(s.log_level)
    if not is_loopback(f"{s.listen_host}:0"):
        log.error("node_bad_config", error=f"--listen-host {s.listen_host!r} is not a loopback address")
        return 2
    asyncio.run(serve(s))
    return 0


run_command = command(FleetSettings, run)  # the argparse `func` of `kvmtimer fleet`


def main(argv: list[str] | None = None) -> int:
    return standalone("kvmtimer fleet", __doc__, add_fleet_arguments)(run_command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
