"""Protocol-buffers wire framing for the hand-built fast paths (telemetry batches).

Both sides splice encoded submessages instead of building and copying messages: the node
joins cached per-vCPU parts into a TelemetryBatch, the controller wraps a batch's bytes as
a ClusterTelemetry. A length-delimited field is its tag, the payload length as a base-128
varint, then the payload (protobuf encoding guide, "Length-Delimited Records").
"""

from __future__ import annotations

FIELD_1_BYTES = b"\x0a"  # tag of field 1, wire type 2 (length-delimited)


def varint(value: int) -> bytes:
    """Base-128 varint of a non-negative integer (least significant group first)."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field_1_prefix(size: int) -> bytes:
    """Tag and length of a length-delimited field 1 holding `size` bytes."""
    return FIELD_1_BYTES + varint(size)
