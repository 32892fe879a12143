"""The typed settings of `kvmtimer node` (options: node.process.main.add_node_arguments).

Built once from flags > environment > config file > defaults (node.runtime.settings.typed);
everything after parsing takes this object, never the argparse namespace.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.process.clock_settings import ClockEffectOptions
from node.runtime.mqtt import MqttOptions
from node.runtime.tls import TlsOptions


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """One node process: the emulated host, how it serves, where it registers and publishes."""

    listen: str  # --listen HOST:PORT (port 0 = any)
    node_id: str  # --node-id
    cntfrq: int  # --cntfrq, Hz
    ecv: int  # --ecv: ID_AA64MMFR0_EL1.ECV level 0..2
    vhe: bool  # --vhe
    nv: bool  # --nv
    api_profile: str  # --api-profile: an ApiProfile name
    clock: str  # --clock: realtime | simulated
    counter_base: int | None  # --counter-base (None: derived from the node id)
    clock_effects: ClockEffectOptions  # --realtime-skew-ns, --realtime-drift-ppm, --realtime-step-*
    log_level: str  # --log-level
    mqtt: MqttOptions  # --mqtt*
    metrics_listen: tuple[str, int] | None  # --metrics-listen (host, port)
    tls: TlsOptions  # --tls-*, --insecure
    tls_allow: tuple[str, ...]  # --tls-allow: client certificate names (empty: the default)
    health_listen: str | None  # --health-listen
    register_with: str | None  # --register-with: controller HOST:PORT
    advertise: str | None  # --advertise
    register_interval: float  # --register-interval, seconds
    token: str | None  # --token presented to the controller
    config: str | None  # --config FILE
