"""The MQTT topic tree and JSON payloads (schema 1), as pure functions over protobuf items.

Topics, under a configurable prefix (default `kvmtimer`):

    <prefix>/controller/status                 retained, QoS 1: controller online/offline (last will)
    <prefix>/nodes/<node>/status               retained, QoS 1: node online/offline, features, health, load
    <prefix>/guests/<guest>/vcpus/<n>/samples  QoS 0: a batch of one vCPU's telemetry samples
    <prefix>/migrations/<id>/events            QoS 1: one message per phase transition or step

Every payload is a UTF-8 JSON object with `"schema": 1`. Counter values and offsets are
JSON integers (exact u64; beyond 2^53 in some offsets, so parse them as integers). Enums
are short names (`VM_COUNTER_OFFSET`, `RUNNING`). README.md ("MQTT telemetry") documents
every field.

Samples are batched per vCPU: `SampleBuffer` collects the samples of each (guest, vCPU)
and `flush()` (called by the bridge every flush interval, 100 ms by default) turns each
vCPU's collection into one message, or only the oldest ones when the bridge's message budget
says so (a large cluster: fewer, larger messages); a vCPU that collects `max_samples`
samples is sent at once. A vCPU whose node or VM changed (a migration) starts a new message. A samples message
lists the field names once (`fields`) and each sample as an array of values in that order
(`samples`); `sample_dicts()` turns them back into objects.
"""

from __future__ import annotations

import itertools
import json
import operator
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from kvmtimer.v1 import controller_pb2 as cpb
from kvmtimer.v1 import node_pb2 as pb

from node.runtime.publisher import OutMessage

SCHEMA_VERSION = 1
DEFAULT_PREFIX = "kvmtimer"
DEFAULT_MAX_SAMPLES = 1000  # samples per vCPU message at most
QOS_SAMPLES = 0
QOS_EVENTS = 1
QOS_STATUS = 1
ONLINE = "online"
OFFLINE = "offline"

_TOPIC_UNSAFE = str.maketrans({"/": "_", "+": "_", "#": "_", "\x00": "_"})


def topic_level(name: str) -> str:
    """One topic level from an id: `/`, `+`, `#` and NUL become `_`; empty becomes `_`."""
    return name.translate(_TOPIC_UNSAFE) or "_"


def check_prefix(prefix: str) -> str:
    """A valid topic prefix (no wildcards, no empty levels), without a trailing `/`."""
    cleaned = prefix.strip().rstrip("/")
    if not cleaned or any(c in cleaned for c in "+#\x00") or "" in cleaned.split("/"):
        raise ValueError(f"invalid MQTT topic prefix {prefix!r} (no wildcards or empty levels)")
    return cleaned


@dataclass(frozen=True, slots=True)
class Topics:
    """The topic tree under one prefix."""

    prefix: str = DEFAULT_PREFIX  # validated with check_prefix

    @property
    def controller_status(self) -> str:
        return f"{self.prefix}/controller/status"

    def node_status(self, node_id: str) -> str:
        return f"{self.prefix}/nodes/{topic_level(node_id)}/status"

    def vcpu_samples(self, guest_id: str, vcpu_index: int) -> str:
        return f"{self.prefix}/guests/{topic_level(guest_id)}/vcpus/{vcpu_index}/samples"

    def migration_events(self, migration_id: str) -> str:
        return f"{self.prefix}/migrations/{topic_level(migration_id)}/events"

    @property
    def everything(self) -> str:
        """Subscription filter for the whole tree."""
        return f"{self.prefix}/#"


def encode(payload: dict[str, object]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


# --- enums and messages as JSON values --------------------------------------------------


def _enum_prefix(enum: EnumDescriptor) -> str:
    """MigrationMethod -> MIGRATION_METHOD_."""
    out = [("_" + c if c.isupper() and i else c) for i, c in enumerate(enum.name)]
    return "".join(out).upper() + "_"


def enum_name(enum: EnumDescriptor, value: int) -> str:
    """Short name of an enum value (`MIGRATION_PHASE_RUNNING` -> `RUNNING`); unknown numbers as digits."""
    v = enum.values_by_number.get(value)
    return v.name.removeprefix(_enum_prefix(enum)) if v is not None else str(value)


def flat_fields(message: Message) -> dict[str, object]:
    """Scalar fields of a flat message by their .proto names: enums as short names, unset
    `optional` fields as null (nested messages and repeated fields are left out)."""
    out: dict[str, object] = {}
    for f in message.DESCRIPTOR.fields:
        if f.type == FieldDescriptor.TYPE_MESSAGE or f.is_repeated:
            continue
        if f.has_presence and not message.HasField(f.name):
            out[f.name] = None
            continue
        value = getattr(message, f.name)
        enum = cast(EnumDescriptor | None, f.enum_type)
        out[f.name] = enum_name(enum, value) if enum is not None else value
    return out


# --- payloads ----------------------------------------------------------------------------


def node_status_payload(node: cpb.NodeStatus, *, source: str, realtime_ns: int) -> dict[str, object]:
    """A node's status as the controller sees it (`source` "controller") or as the node
    reports itself (`source` "node"). `status` is "online" while the node is healthy."""
    return {
        "schema": SCHEMA_VERSION,
        "node_id": node.node_id,
        "status": ONLINE if node.healthy else OFFLINE,
        "source": source,
        "address": node.address,
        "features": {
            "cntfrq_hz": node.cntfrq_hz,
            "ecv": node.ecv,
            "vhe": node.vhe,
            "has_cntpoff": node.has_cntpoff,
            "api_profile": enum_name(pb.ApiProfile.DESCRIPTOR, node.api_profile),
            "clock_mode": enum_name(pb.ClockMode.DESCRIPTOR, node.clock_mode),
        },
        "health": {"healthy": node.healthy, "last_error": node.last_error},
        "load": {"vms": node.guest_count, "vcpus": node.vcpu_count},
        "realtime_ns": realtime_ns,
    }


def node_status_from_host_info(info: pb.HostInfo, address: str) -> cpb.NodeStatus:
    """The NodeStatus a node process reports about itself (always healthy: it is running)."""
    return cpb.NodeStatus(
        node_id=info.node_id,
        address=address,
        healthy=True,
        cntfrq_hz=info.cntfrq_hz,
        ecv=info.ecv,
        vhe=info.vhe,
        api_profile=info.api_profile,
        clock_mode=info.clock_mode,
        has_cntpoff=info.has_cntpoff,
        guest_count=info.vm_count,
        vcpu_count=info.vcpu_count,
    )


def node_offline_payload(node_id: str, *, source: str, reason: str) -> dict[str, object]:
    """A node's last will (reason "connection lost") or clean-stop status (reason "stopped")."""
    return {
        "schema": SCHEMA_VERSION,
        "node_id": node_id,
        "status": OFFLINE,
        "source": source,
        "reason": reason,
    }


def controller_status_payload(
    status: str,
    *,
    controller_id: str,
    address: str = "",
    reason: str = "",
    realtime_ns: int | None = None,
    stats: dict[str, object] | None = None,
) -> dict[str, object]:
    """The controller's own status; the last will is `offline` with reason "connection lost"."""
    payload: dict[str, object] = {
        "schema": SCHEMA_VERSION,
        "status": status,
        "controller_id": controller_id,
    }
    if address:
        payload["address"] = address
    if reason:
        payload["reason"] = reason
    if realtime_ns is not None:
        payload["realtime_ns"] = realtime_ns
    if stats is not None:
        payload["telemetry"] = stats
    return payload


def migration_event_payload(event: cpb.MigrationEvent) -> dict[str, object]:
    m = event.migration
    return {
        "schema": SCHEMA_VERSION,
        "migration_id": m.migration_id,
        "guest_id": m.guest_id,
        "phase": enum_name(cpb.MigrationPhase.DESCRIPTOR, m.phase),
        "step": event.step,
        "realtime_ns": event.realtime_ns,
        "migration": flat_fields(m),
    }


# The values of one sample, in this order (the TelemetrySample fields without the ids that
# the message carries once: node, VM, guest, vCPU).
SAMPLE_FIELDS = (
    "realtime_ns",
    "host_counter",
    "cntvct",
    "cntpct",
    "voffset",
    "poffset",
    "uses_cntpoff",
    "traps_cntpct",
    "traps_ptimer",
    "trap_count",
    "vtimer_ctl",
    "vtimer_cval",
    "vtimer_level",
    "ptimer_ctl",
    "ptimer_cval",
    "ptimer_level",
    "running",
)
_FIELDS_JSON = json.dumps(SAMPLE_FIELDS, separators=(",", ":"))
# Policy: a sample is buffered as a tuple (one C-level attrgetter call) and a message's rows are
# encoded by one json.dumps call; building a 17-key dict per sample and encoding it cost about
# twice as much CPU, and at the rates (batched MQTT >= 50k samples/s) that is most of
# the publishing work.
sample_values = operator.attrgetter(*SAMPLE_FIELDS)


def samples_payload_json(
    guest_id: str, vcpu_index: int, node_id: str, vm_id: str, rows: list[tuple[object, ...]]
) -> bytes:
    """`{"schema": 1, "guest_id", "vcpu", "node_id", "vm_id", "fields": [...], "samples": [[...], ...]}`."""
    head = json.dumps(
        {
            "schema": SCHEMA_VERSION,
            "guest_id": guest_id,
            "vcpu": vcpu_index,
            "node_id": node_id,
            "vm_id": vm_id,
        },
        separators=(",", ":"),
    )
    body = json.dumps(rows, separators=(",", ":"))
    return f'{head[:-1]},"fields":{_FIELDS_JSON},"samples":{body}}}'.encode()


def sample_dicts(payload: dict[str, object]) -> list[dict[str, object]]:
    """The samples of a decoded samples message as objects keyed by field name (for consumers)."""
    fields, rows = payload["fields"], payload["samples"]
    assert isinstance(fields, list) and isinstance(rows, list)
    return [dict(zip(fields, row, strict=True)) for row in rows]


# --- messages ------------------------------------------------------------------------------

_Key = tuple[str, int, str, str]  # (guest, vCPU, node, VM)


@dataclass(slots=True)
class SampleBuffer:
    """Per-vCPU sample batches waiting for the next flush."""

    topics: Topics
    max_samples: int = DEFAULT_MAX_SAMPLES  # a vCPU's message is sent once it holds this many
    pending: int = 0  # samples buffered now
    _rows: dict[_Key, list[tuple[object, ...]]] = field(default_factory=dict)

    def add(self, batch: pb.TelemetryBatch) -> list[OutMessage]:
        """Buffer a batch; returns the messages of vCPUs that reached max_samples."""
        full: list[OutMessage] = []
        rows_by_key = self._rows
        limit = self.max_samples
        get = sample_values
        n = 0
        for s in batch.samples:
            vm_id = s.vm_id
            # The controller sets guest_id; a node-level batch names the VM instead.
            key = (s.guest_id or vm_id, s.vcpu_index, s.node_id, vm_id)
            rows = rows_by_key.get(key)
            if rows is None:
                rows = rows_by_key[key] = []
            rows.append(get(s))
            n += 1
            if len(rows) >= limit:
                self.pending += n
                n = 0
                full.append(self._message(key, rows_by_key.pop(key)))
        self.pending += n
        return full

    @property
    def vcpus(self) -> int:
        """vCPUs with samples waiting."""
        return len(self._rows)

    def flush(self, limit: int | None = None) -> list[OutMessage]:
        """Buffered vCPU batches as one message each, oldest first (the vCPU whose first
        waiting sample came earliest): all of them, or at most `limit`."""
        if limit is None or limit >= len(self._rows):
            out = [self._message(key, rows) for key, rows in self._rows.items()]
            self._rows = {}
            return out
        keys = list(itertools.islice(self._rows, max(0, limit)))
        return [self._message(key, self._rows.pop(key)) for key in keys]

    def _message(self, key: _Key, rows: list[tuple[object, ...]]) -> OutMessage:
        guest, vcpu, node, vm = key
        self.pending -= len(rows)
        return OutMessage(
            self.topics.vcpu_samples(guest, vcpu),
            samples_payload_json(guest, vcpu, node, vm, rows),
            QOS_SAMPLES,
            False,
        )


def node_status_message(topics: Topics, node: cpb.NodeStatus, *, source: str, realtime_ns: int) -> OutMessage:
    return OutMessage(
        topics.node_status(node.node_id),
        encode(node_status_payload(node, source=source, realtime_ns=realtime_ns)),
        QOS_STATUS,
        True,
    )


def node_offline_message(topics: Topics, node_id: str, *, source: str, reason: str) -> OutMessage:
    return OutMessage(
        topics.node_status(node_id),
        encode(node_offline_payload(node_id, source=source, reason=reason)),
        QOS_STATUS,
        True,
    )


def controller_status_message(topics: Topics, payload: dict[str, object]) -> OutMessage:
    """`payload` from controller_status_payload()."""
    return OutMessage(topics.controller_status, encode(payload), QOS_STATUS, True)


def migration_event_message(topics: Topics, event: cpb.MigrationEvent) -> OutMessage:
    return OutMessage(
        topics.migration_events(event.migration.migration_id),
        encode(migration_event_payload(event)),
        QOS_EVENTS,
        False,
    )


def status_key(node: cpb.NodeStatus) -> bytes:
    """What makes a node status worth re-publishing (everything but the timestamp)."""
    return node.SerializeToString(deterministic=True)


def map_item(topics: Topics, item: cpb.ClusterTelemetry, samples: SampleBuffer) -> Iterable[OutMessage]:
    """Messages for one telemetry item: events and node statuses at once, samples into `samples`."""
    kind = item.WhichOneof("item")
    if kind == "samples":
        return samples.add(item.samples)
    if kind == "migration":
        return [migration_event_message(topics, item.migration)]
    if kind == "node":
        return [
            node_status_message(
                topics, item.node.node, source="controller", realtime_ns=item.node.realtime_ns
            )
        ]
    return []
