"""The typed settings of `kvmtimer controller` (options: controller.app.main.add_controller_arguments).

Built once from flags > environment > config file > defaults (node.runtime.settings.typed).
"""

from __future__ import annotations

from dataclasses import dataclass

from node.runtime.mqtt import MqttOptions
from node.runtime.tls import TlsOptions


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    """One controller process: its listener, limits, nodes, discovery and telemetry."""

    listen: str  # --listen HOST:PORT
    node: tuple[tuple[str, str], ...]  # --node ID=HOST:PORT, registered at start
    max_parallel: int  # --max-parallel migrations in the cluster
    max_outbound: int  # --max-outbound migrations per source node
    health_interval: float  # --health-interval seconds (0 = off)
    register_timeout: float  # --register-timeout seconds
    state: str | None  # --state FILE (SQLite state file; None: the per-user default)
    log_level: str  # --log-level
    metrics_listen: tuple[str, int] | None  # --metrics-listen (host, port)
    mqtt: MqttOptions  # --mqtt*
    tls: TlsOptions  # --tls-*, --insecure (listener, and towards the nodes)
    token: str | None  # --token required from clients
    health_listen: str | None  # --health-listen
    discover_dns: tuple[str, ...]  # --discover-dns NAME[:PORT]
    discover_interval: float  # --discover-interval seconds
    discover_nameserver: tuple[str, int] | None  # --discover-nameserver (ip, port)
    config: str | None  # --config FILE
