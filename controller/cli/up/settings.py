"""The typed settings of `kvmtimer up` (options: controller.cli.up.add_up_arguments)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from node.runtime.mqtt import MqttOptions


@dataclass(frozen=True, slots=True)
class UpSettings:
    """One `kvmtimer up` run."""

    duration: float | None  # --duration seconds (None: until Ctrl-C)
    nodes: int  # --nodes: node processes
    guests: int  # --guests
    interval: float  # --interval: seconds between migrations
    period_ticks: int | None  # --period-ticks: guest timer period (None: sized to the fleet)
    hosts_per_process: int | None  # --hosts-per-process (None: 1 for a small cluster, else fleets)
    skew: int  # --skew NS: deliberate realtime skews between the nodes
    record: Path | None  # --record FILE (JSONL telemetry)
    mqtt: MqttOptions  # --mqtt* (default: an embedded broker)
    no_mqtt: bool  # --no-mqtt
    listen: str  # --listen: the controller's HOST:PORT
    seed: int | None  # --seed
    log_file: Path | None  # --log-file
    log_level: str  # --log-level (for --log-file)
    state: Path | None  # --state FILE (None: a fresh temporary file per run)
