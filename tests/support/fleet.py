"""A fleet driven by an in-process controller: migration storms and checking every guest
(tests/bench/fleet.py and tests/e2e/test_fleet.py)."""

from __future__ import annotations

import asyncio
import random
import time

from kvmtimer.v1 import node_pb2 as pb

from controller.core.migration import Limits, Method, MigrationRecord, Phase
from controller.service.cluster import Cluster


async def storm(
    cluster: Cluster, limits: Limits, count: int, rng: random.Random
) -> tuple[float, list[MigrationRecord], float, list[BaseException]]:
    """`count` migrations (AUTO, random other host, allow_state_loss), no guest moved twice at once;
    (wall s, records, controller CPU s, refusals)."""
    cluster.limits = limits
    nodes = list(cluster.nodes)
    order: list[str] = []
    while len(order) < count:
        batch = list(cluster.guests)
        rng.shuffle(batch)
        order += batch[: count - len(order)]
    cpu0, t0 = time.process_time(), time.monotonic()

    async def one(guest_id: str) -> MigrationRecord:
        source = cluster.guest(guest_id).node_id
        destination = rng.choice([n for n in nodes if n != source])
        return await cluster.migrate(guest_id, destination, Method.AUTO, wait=True, allow_state_loss=True)

    # A guest appears at most once per batch of len(guests), so no guest is moved twice at once.
    records: list[MigrationRecord] = []
    refused: list[BaseException] = []
    step = len(cluster.guests)
    for i in range(0, len(order), step):
        for r in await asyncio.gather(*(one(g) for g in order[i : i + step]), return_exceptions=True):
            if isinstance(r, MigrationRecord):
                records.append(r)
            else:
                refused.append(r)
    return time.monotonic() - t0, records, time.process_time() - cpu0, refused


async def check_guests(cluster: Cluster, expected: int) -> tuple[int, int, int, int]:
    """(guests found, lost or duplicated, vCPUs whose counter went backwards, vCPUs missing
    interrupts beyond their own lateness).

    The virtual counter must never go backwards. The physical counter is checked only for guests
    never moved by value: before 6.4 a kernel cannot set it (it reads the destination's host
    counter, README "what is carried"), which is kernel truth, not an emulator error.
    """
    by_value = {
        m.guest_id
        for m in cluster.migrations.values()
        if m.phase is Phase.SUCCEEDED and m.method is Method.BY_VALUE
    }
    found = lost = backwards = short = 0
    vm_owners: dict[tuple[str, str], int] = {}
    for node_id, client in cluster.clients.items():
        listed = await client.stub.ListVms(pb.ListVmsRequest())
        for vm in listed.vms:
            vm_owners[(node_id, vm.vm_id)] = vm_owners.get((node_id, vm.vm_id), 0) + 1
    for guest in cluster.guests.values():
        if (guest.node_id, guest.vm_id) not in vm_owners:
            lost += 1
            continue
        found += 1
        obs = await cluster.observations(guest)
        period = obs.spec.period_ticks
        for v in obs.vcpus:
            physical_kept = guest.guest_id not in by_value
            if (v.HasField("min_step_v") and v.min_step_v < 0) or (
                physical_kept and v.HasField("min_step_p") and v.min_step_p < 0
            ):
                backwards += 1
            allowed = 1 + v.max_lateness_ticks // max(1, period)
            if v.vtimer_expected - v.vtimer_received > allowed:
                short += 1
    lost += max(0, expected - found - lost)
    lost += max(0, len(vm_owners) - expected)  # a VM on some host that no guest owns: duplicated
    return found, lost, backwards, short
