"""Telemetry recordings: JSONL files of `kvmtimer.v1.ClusterTelemetry` items.

One item per line in the canonical proto3 JSON mapping (`google.protobuf.json_format`,
.proto field names, default values included, 64-bit integers as strings):
`{"samples": {...}}` (a TelemetryBatch), `{"migration": {...}}` (a MigrationEvent) or
`{"node": {...}}` (a NodeHealthEvent). `kvmtimer up --record FILE` writes them; the
reader also accepts the earlier format of plain `Migration` records, one per line.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

import structlog
from google.protobuf import json_format
from kvmtimer.v1 import controller_pb2 as cpb

from controller.telemetry.hub import Hub, Subscription

log = structlog.get_logger("kvmtimer.telemetry")

FLUSH_INTERVAL_S = 1.0


def item_to_json(item: cpb.ClusterTelemetry) -> str:
    return json.dumps(
        json_format.MessageToDict(
            item, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        ),
        separators=(",", ":"),
    )


def item_from_json(obj: dict[str, object]) -> cpb.ClusterTelemetry:
    """One recorded line (already decoded); ValueError if it is neither format."""
    if "migration_id" in obj:  # earlier recordings: a bare Migration record
        m = json_format.ParseDict(obj, cpb.Migration(), ignore_unknown_fields=True)
        realtime_ns = m.finished_realtime_ns or m.created_realtime_ns
        return cpb.ClusterTelemetry(migration=cpb.MigrationEvent(migration=m, realtime_ns=realtime_ns))
    try:
        item = json_format.ParseDict(obj, cpb.ClusterTelemetry(), ignore_unknown_fields=True)
    except json_format.ParseError as err:
        raise ValueError(str(err)) from None
    if item.WhichOneof("item") is None:
        raise ValueError("not a telemetry item (samples, migration or node)")
    return item


def read_recording(path: Path) -> Iterator[cpb.ClusterTelemetry]:
    """Items of a recording in file order; ValueError names the first bad line."""
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
                yield item_from_json(obj)
            except ValueError as err:
                raise ValueError(f"{path}:{number}: {err}") from None


def write_items(out: TextIO, items: Iterable[cpb.ClusterTelemetry]) -> int:
    n = 0
    for item in items:
        out.write(item_to_json(item) + "\n")
        n += 1
    return n


class TelemetryRecorder:
    """Writes every item of a telemetry Hub to a JSONL file, until the hub closes or stop().

    Subscribes in start(), so nothing published afterwards is missed unless the writer falls
    more than the hub's buffer behind (`hub_dropped`).
    """

    def __init__(
        self, hub: Hub[cpb.ClusterTelemetry], out: TextIO, *, initial: Iterable[cpb.ClusterTelemetry] = ()
    ) -> None:
        self.hub = hub
        self.out = out
        self.initial = list(initial)
        self.written = 0  # items written
        self._sub: Subscription[cpb.ClusterTelemetry] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def hub_dropped(self) -> int:
        return self._sub.dropped if self._sub is not None else 0

    def start(self) -> None:
        if self._task is None:
            self._sub = self.hub.subscribe()
            self.written += write_items(self.out, self.initial)
            self._task = asyncio.create_task(self._run(), name="telemetry-recorder")

    async def _run(self) -> None:
        assert self._sub is not None
        loop = asyncio.get_running_loop()
        next_flush = loop.time() + FLUSH_INTERVAL_S
        try:
            async for item in self.hub.stream(self._sub):
                self.out.write(item_to_json(item) + "\n")
                self.written += 1
                if item.HasField("migration") or loop.time() >= next_flush:
                    self.out.flush()
                    next_flush = loop.time() + FLUSH_INTERVAL_S
        except Exception:
            log.exception("telemetry_recorder_error")
        finally:
            self.out.flush()

    async def stop(self, timeout_s: float = 2.0) -> None:
        """Write what is queued (up to `timeout_s`) and stop."""
        task, sub = self._task, self._sub
        if task is None or sub is None:
            return
        await Hub.finish(task, sub, timeout_s)
