"""Telemetry of one host: per-vCPU samples and monotonic host totals (pure).

A sampling round reads the host counter and the machine's CLOCK_REALTIME at one
instant (`HostCounter.reference_sample()`: without the host's deliberate skew, so
samples of every node share one time axis), and every vCPU sample of the round is taken at that
instant: guest CNTVCT = H - voffset, CNTPCT = H - poffset (mod 2^64), timer
lines as `should_fire()` sees them at H. Nothing here sleeps or schedules:
adapters decide when a round happens.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import NamedTuple

from node.core.clock import U64_MASK
from node.core.errors import BadRequest
from node.core.host import Host
from node.core.timer import TimerId, should_fire
from node.core.vm import Vm

DEFAULT_RATE_HZ = 10.0  # rounds per second when the client leaves rate_hz at 0
MAX_RATE_HZ = 1000.0  # 1 kHz: the fastest a stream may sample


# Policy: samples are NamedTuples, not frozen dataclasses. They are just as immutable
# and typed, but a frozen dataclass pays one object.__setattr__ per field (~7 us for a
# 20-field sample on the CI machine, against ~1 us for a tuple), and a 1 kHz stream over
# hundreds of vCPUs builds hundreds of thousands of them per second.
class VcpuSample(NamedTuple):
    """One vCPU at one instant (all values as the host sees them).

    Field order is the TelemetrySample field-number order (guest_id, which the
    controller sets, is left out).
    """

    node_id: str  # host the vCPU runs on
    vm_id: str  # its VM
    vcpu_index: int  # vCPU index
    realtime_ns: int  # host CLOCK_REALTIME taken with host_counter
    host_counter: int  # H
    cntvct: int  # guest CNTVCT_EL0 = H - voffset
    cntpct: int  # guest CNTPCT_EL0 = H - poffset
    voffset: int  # VM-wide virtual offset
    poffset: int  # VM-wide physical offset
    uses_cntpoff: bool  # CNTPOFF_EL2 carries poffset (no traps for it)
    traps_cntpct: bool  # CNTPCT_EL0 reads exit to EL2
    traps_ptimer: bool  # CNTP_* accesses exit to EL2
    trap_count: int  # timer accesses emulated at EL2 so far
    vtimer_ctl: int  # CNTV_CTL_EL0 as stored (ISTATUS is never stored)
    vtimer_cval: int  # CNTV_CVAL_EL0
    vtimer_level: bool  # virtual timer line asserted
    ptimer_ctl: int  # CNTP_CTL_EL0 as stored
    ptimer_cval: int  # CNTP_CVAL_EL0
    ptimer_level: bool  # physical timer line asserted
    running: bool  # the VM is resumed by its VMM


class VcpuTimers(NamedTuple):
    """The per-vCPU part of a sample (what differs between the vCPUs of one VM)."""

    vcpu_index: int  # vCPU index
    trap_count: int  # timer accesses emulated at EL2 so far
    vtimer_ctl: int  # CNTV_CTL_EL0 as stored
    vtimer_cval: int  # CNTV_CVAL_EL0
    vtimer_level: bool  # virtual timer line asserted
    ptimer_ctl: int  # CNTP_CTL_EL0 as stored
    ptimer_cval: int  # CNTP_CVAL_EL0
    ptimer_level: bool  # physical timer line asserted


class VmRound(NamedTuple):
    """Every (or some) vCPU of one VM at one instant: the VM-wide part once, then the vCPUs."""

    node_id: str  # host
    vm_id: str  # the VM
    realtime_ns: int  # host CLOCK_REALTIME taken with host_counter
    host_counter: int  # H
    cntvct: int  # guest CNTVCT_EL0 = H - voffset
    cntpct: int  # guest CNTPCT_EL0 = H - poffset
    voffset: int  # VM-wide virtual offset
    poffset: int  # VM-wide physical offset
    uses_cntpoff: bool  # CNTPOFF_EL2 carries poffset
    traps_cntpct: bool  # CNTPCT_EL0 reads exit to EL2
    traps_ptimer: bool  # CNTP_* accesses exit to EL2
    running: bool  # the VM is resumed by its VMM
    vcpus: tuple[VcpuTimers, ...]  # by vCPU index

    def samples(self) -> list[VcpuSample]:
        """One full sample per vCPU."""
        return [
            VcpuSample(
                self.node_id,
                self.vm_id,
                t.vcpu_index,
                self.realtime_ns,
                self.host_counter,
                self.cntvct,
                self.cntpct,
                self.voffset,
                self.poffset,
                self.uses_cntpoff,
                self.traps_cntpct,
                self.traps_ptimer,
                t.trap_count,
                t.vtimer_ctl,
                t.vtimer_cval,
                t.vtimer_level,
                t.ptimer_ctl,
                t.ptimer_cval,
                t.ptimer_level,
                self.running,
            )
            for t in self.vcpus
        ]


@dataclass(frozen=True, slots=True)
class HostTotals:
    """Host-wide figures for metrics; the counters never go down."""

    vms: int  # VMs now
    vcpus: int  # vCPUs now
    traps: int  # timer traps ever taken on this host (destroyed VMs included)
    guest_interrupts: int  # guest timer interrupts ever delivered on this host


def check_rate_hz(rate_hz: float) -> float:
    """A stream's sampling rate: 0 means DEFAULT_RATE_HZ; otherwise 0 < rate <= MAX_RATE_HZ."""
    if rate_hz == 0:
        return DEFAULT_RATE_HZ
    if not (math.isfinite(rate_hz) and 0 < rate_hz <= MAX_RATE_HZ):
        raise BadRequest(f"rate_hz must be in (0, {MAX_RATE_HZ:g}] (0 = {DEFAULT_RATE_HZ:g}), got {rate_hz}")
    return rate_hz


def select_vms(host: Host, vm_ids: Collection[str] = (), *, skip_missing: bool = False) -> list[Vm]:
    """The VMs to sample, in `vm_ids` order without repeats (empty = every VM).

    An unknown id raises VmNotFound unless `skip_missing` (a VM destroyed while a
    stream watches it simply stops appearing).
    """
    if not vm_ids:
        return list(host.vms.values())
    selected: dict[str, Vm] = {}
    for vm_id in vm_ids:
        if vm_id in selected:
            continue
        if skip_missing and vm_id not in host.vms:
            continue
        selected[vm_id] = host.vm(vm_id)
    return list(selected.values())


def count_vcpus(vms: Collection[Vm]) -> int:
    return sum(len(vm.vcpus) for vm in vms)


def sample_round(host: Host, vms: Collection[Vm]) -> list[VmRound]:
    """One round: every vCPU of `vms` (VM order, then vCPU index order) at one (H, realtime) instant."""
    h, realtime_ns = host.counter.reference_sample()  # the machine's realtime: one axis for all nodes
    node_id = host.node_id
    vt, pt = int(TimerId.VTIMER), int(TimerId.PTIMER)  # plain ints index faster than IntEnum
    make = VcpuTimers._make  # skips NamedTuple.__new__'s Python frame (hot loop)
    out: list[VmRound] = []
    for vm in vms:
        voffset, poffset = vm.voffset, vm.poffset
        cntvct = (h - voffset) & U64_MASK
        cntpct = (h - poffset) & U64_MASK
        vcpus = vm.vcpus
        parts: list[VcpuTimers] = []
        append = parts.append
        for index in sorted(vcpus):
            vcpu = vcpus[index]
            v, p = vcpu.timers[vt], vcpu.timers[pt]
            append(
                make(
                    (
                        index,
                        vcpu.trap_count,
                        v.ctl,
                        v.cval,
                        should_fire(v.ctl, v.cval, cntvct),
                        p.ctl,
                        p.cval,
                        should_fire(p.ctl, p.cval, cntpct),
                    )
                )
            )
        traps = vm.traps
        out.append(
            VmRound(
                node_id,
                vm.vm_id,
                realtime_ns,
                h,
                cntvct,
                cntpct,
                voffset,
                poffset,
                traps.uses_cntpoff,
                traps.trap_cntpct,
                traps.trap_ptimer,
                vm.running,
                tuple(parts),
            )
        )
    return out


def sample_host(host: Host, vm_ids: Collection[str] = ()) -> list[VcpuSample]:
    """Every vCPU of the host (or of `vm_ids`; an unknown id raises VmNotFound) at one instant."""
    return [s for r in sample_round(host, select_vms(host, vm_ids)) for s in r.samples()]


def host_totals(host: Host) -> HostTotals:
    vms = list(host.vms.values())
    live_traps = sum(vcpu.trap_count for vm in vms for vcpu in vm.vcpus.values())
    return HostTotals(
        vms=len(vms),
        vcpus=count_vcpus(vms),
        traps=host.retired_trap_count + live_traps,
        guest_interrupts=host.guest_interrupts,
    )
