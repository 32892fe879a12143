"""`kvmtimer report`: recordings -> error series -> a PNG of the requested size.

Edge cases covered:
- a recording of a real simulated cluster run (the recorder on the telemetry hub, vCPU samples
  taken from the nodes' cores): the BY_VALUE move measures exactly minus the stopped time, the
  offset move exactly 0, the PNG has the requested size (odd sizes too);
- the earlier recording format (bare Migration records) still reads, and draws steps from
  each migration's counter_error_ticks;
- a bad line names its line number; an empty recording exits 1 and writes nothing;
- the same recording through the command line, with its realtime skew per host pair and host.
"""

from __future__ import annotations

import asyncio
import json
import struct
import zlib
from pathlib import Path

import pytest
from kvmtimer.v1 import controller_pb2 as cpb
from kvmtimer.v1 import node_pb2 as pb

from controller.cli import main
from controller.core.migration import Method, Phase
from controller.service.server import build_server, mark_serving
from controller.service.telemetry import node_statuses
from controller.telemetry import record, report
from controller.telemetry.record import TelemetryRecorder
from node.core.clock import U64_MASK
from node.core.features import ApiProfile, EcvLevel, HostFeatures
from node.core.workload import WorkloadSpec
from tests.support.cluster import CNTFRQ, SimCluster, sim_cluster

STOPPED_S = 0.3  # simulated state-transfer time of each migration


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the signature, the chunk CRC and IEND."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert (length, kind) == (13, b"IHDR")
    ihdr = data[16 : 16 + 13]
    (crc,) = struct.unpack(">I", data[29:33])
    assert crc == zlib.crc32(b"IHDR" + ihdr), "IHDR CRC mismatch"
    assert data[-12:] == b"\x00\x00\x00\x00IEND\xaeB`\x82", "no IEND chunk at the end"
    width, height, depth, _colour, _comp, _filter, _interlace = struct.unpack(">IIBBBBB", ihdr)
    assert depth == 8
    return width, height


def sample_round(sim: SimCluster) -> None:
    """One sampling round on every node (what a node's telemetry stream reads), published like
    the controller's collector does (guest ids filled in)."""
    guest_of = {(str(g.node_id), g.vm_id): str(g.guest_id) for g in sim.cluster.guests.values()}
    for node_id, node in sim.nodes.items():
        h, realtime_ns = node.host.get_clock()
        samples = [
            pb.TelemetrySample(
                node_id=node_id,
                vm_id=vm.vm_id,
                guest_id=guest_of.get((node_id, vm.vm_id), ""),
                vcpu_index=index,
                realtime_ns=realtime_ns,
                host_counter=h,
                cntvct=(h - vm.voffset) & U64_MASK,
                cntpct=(h - vm.poffset) & U64_MASK,
                voffset=vm.voffset,
                poffset=vm.poffset,
                running=vm.running,
            )
            for vm in node.host.vms.values()
            for index in sorted(vm.vcpus)
        ]
        if samples:
            sim.cluster.telemetry.publish(cpb.ClusterTelemetry(samples=pb.TelemetryBatch(samples=samples)))


async def record_run(path: Path) -> None:
    nodes = [
        ("co", HostFeatures(ecv=EcvLevel.CNTPOFF, vhe=True, api_profile=ApiProfile.VM_COUNTER_OFFSET)),
        ("bv", HostFeatures(ecv=EcvLevel.NI, vhe=True, api_profile=ApiProfile.BY_VALUE)),
    ]
    async with sim_cluster(nodes) as sim:
        sim.transfer_delay_ns = int(STOPPED_S * 1e9)
        with path.open("w", encoding="utf-8") as out:
            initial = [
                cpb.ClusterTelemetry(node=cpb.NodeHealthEvent(node=n)) for n in node_statuses(sim.cluster)
            ]
            recorder = TelemetryRecorder(sim.cluster.telemetry, out, initial=initial)
            recorder.start()
            await sim.cluster.create_guest("g1", 2, WorkloadSpec(CNTFRQ // 100), "co")
            await sim.cluster.create_guest("g2", 1, WorkloadSpec(CNTFRQ // 100), "bv")
            for destination in ("bv", "co", None):
                for _ in range(10):
                    sim.advance_s(0.1)
                    sample_round(sim)
                if destination is not None:
                    rec = await sim.cluster.migrate("g1", destination, Method.AUTO, wait=True)
                    assert rec.phase is Phase.SUCCEEDED, rec.reason
            await recorder.stop()
            assert recorder.hub_dropped == 0


@pytest.mark.asyncio
async def test_report_from_a_recorded_simulated_run(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    await record_run(path)
    items = list(record.read_recording(path))
    kinds = {item.WhichOneof("item") for item in items}
    assert kinds == {"node", "samples", "migration"}

    data = report.build_report(items)
    assert [g.guest_id for g in data.guests] == ["g1", "g2"]
    g1, g2 = data.guests
    assert g1.from_samples and g1.cntfrq_hz == CNTFRQ
    finished = [i.migration.migration.migration_id for i in items if i.HasField("migration")]
    assert [(m.migration_id, m.method, m.jump_ticks) for m in g1.marks] == [
        (finished[0], cpb.MIGRATION_METHOD_BY_VALUE, -int(STOPPED_S * CNTFRQ)),  # guest time stalled
        (finished[-1], cpb.MIGRATION_METHOD_VM_COUNTER_OFFSET, 0),  # carried exactly
    ]
    assert g2.marks == [] and set(g2.by_value_ticks) == {0} and set(g2.offset_ticks) == {0}
    # Each panel keeps only its own kind of jump: flat for the offset move, one step for BY_VALUE.
    assert g1.by_value_ticks[0] == 0 and g1.by_value_ticks[-1] == -int(STOPPED_S * CNTFRQ)
    assert set(g1.offset_ticks) == {0}
    assert data.migrations == 2 and data.samples == 60

    out = tmp_path / "report.png"
    report.render(data, out, width_px=901, height_px=457)
    assert png_size(out) == (901, 457)


def test_report_from_earlier_migration_records(tmp_path: Path) -> None:
    path = tmp_path / "migrations.jsonl"
    lines = []
    for i, (method, error) in enumerate(
        [(cpb.MIGRATION_METHOD_BY_VALUE, -250_000), (cpb.MIGRATION_METHOD_VCPU_OFFSETS, 0)]
    ):
        m = cpb.Migration(
            migration_id=f"m-{i}",
            guest_id="g",
            source="a",
            destination="b",
            method=method,
            phase=cpb.MIGRATION_PHASE_SUCCEEDED,
            created_realtime_ns=10**18 + i * 10**9,
            finished_realtime_ns=10**18 + i * 10**9 + 10**8,
            counter_error_ticks=error,
        )
        lines.append(record.item_to_json(cpb.ClusterTelemetry(migration=cpb.MigrationEvent(migration=m))))
        # The bare-record format `kvmtimer up --record` wrote before telemetry items.
        lines[-1] = json.dumps(json.loads(lines[-1])["migration"]["migration"])
    path.write_text("\n".join(lines) + "\n")
    data = report.build_report(record.read_recording(path))
    (g,) = data.guests
    assert not g.from_samples
    assert g.by_value_ticks == [0, -250_000, -250_000] and g.offset_ticks == [0, 0, 0]
    out = tmp_path / "steps.png"
    report.render(data, out, width_px=640, height_px=480, unit="ticks")
    assert png_size(out) == (640, 480)


def test_bad_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"node": {"node": {"node_id": "a"}}}\n\n{"bogus": 1}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: not a telemetry item"):
        list(record.read_recording(path))


@pytest.mark.asyncio
async def test_report_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "run.jsonl"
    await record_run(path)
    out = tmp_path / "cli.png"
    code = main(["report", "--from", str(path), "--out", str(out), "--width", "1000", "--height", "600"])
    assert code == 0, capsys.readouterr().err
    assert png_size(out) == (1000, 600)
    printed = capsys.readouterr().out
    assert "2 guests, 2 migrations, 60 samples" in printed
    # The realtime skew per host pair and per host follows (these nodes share one clock).
    assert "Realtime skew (destination minus source realtime" in printed
    assert "Hosts' realtime against " in printed and "+0.0 µs" in printed

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    nothing = tmp_path / "nothing.png"
    assert main(["report", "--from", str(empty), "--out", str(nothing)]) == 1
    assert "nothing to plot" in capsys.readouterr().err
    assert not nothing.exists()
    assert main(["report", "--from", str(tmp_path / "missing.jsonl"), "--out", str(nothing)]) == 2


@pytest.mark.asyncio
async def test_report_from_the_controllers_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No --from: the controller's migration records (each one's measured counter error)."""
    nodes = [
        ("co", HostFeatures(ecv=EcvLevel.CNTPOFF, vhe=True, api_profile=ApiProfile.VM_COUNTER_OFFSET)),
        ("bv", HostFeatures(ecv=EcvLevel.NI, vhe=True, api_profile=ApiProfile.BY_VALUE)),
    ]
    async with sim_cluster(nodes) as sim:
        sim.transfer_delay_ns = int(STOPPED_S * 1e9)
        await sim.cluster.create_guest("g1", 1, WorkloadSpec(CNTFRQ // 100), "co")
        for destination in ("bv", "co"):
            sim.advance_s(0.5)
            rec = await sim.cluster.migrate("g1", destination, Method.AUTO, wait=True)
            assert rec.phase is Phase.SUCCEEDED, rec.reason
        server, port, health = build_server(sim.cluster)
        await server.start()
        await mark_serving(health)
        try:
            out = tmp_path / "records.png"
            argv = ["report", "--controller", f"127.0.0.1:{port}", "--out", str(out), "--width", "700"]
            assert await asyncio.to_thread(main, argv) == 0
        finally:
            await server.stop(grace=None)
    assert png_size(out) == (700, 700)
    assert "1 guest, 2 migrations, 0 samples from controller 127.0.0.1:" in capsys.readouterr().out
    # Nothing listening there any more: unreachable, exit 3.
    assert main(["report", "--controller", f"127.0.0.1:{port}", "--out", str(out), "--timeout", "1"]) == 3
