"""Applying a source's counter record on a destination host (spec §4.2), at one instant.

The source (VM paused) reads the guest counters together with its (H_s, RT_s) instant.
The destination applies that record the way a VMM process on the destination host
would: it reads its own (H_d, RT_d) at the instant the offsets take effect and credits
the guest with the realtime that passed,

    elapsed_ticks = ⌊max(RT_d, RT_s)·f/1e9⌋ − ⌊RT_s·f/1e9⌋       (never negative)
    voffset_d     = H_d − (CNTVCT_s + elapsed_ticks)
    poffset_d     = H_d − (CNTPCT_s + elapsed_ticks)

Reading (H_d, RT_d) here, and not on a controller, is what makes the "never backwards"
clamp exact: when the destination's realtime is behind the source's (clock skew), the
guest is credited 0 as of this very instant, whatever any other clock says.

The credited ticks are the tick boundaries of realtime crossed between the two instants
(`ticks_between`), so they telescope with the host counters' own grid: with no skew the
guest's counter continues exactly as if it had never moved. They equal the spec's
⌊(RT_d − RT_s)·f/1e9⌋ whenever the span is a whole number of ticks (cases 36, 37, 39)
and differ from it by at most one tick otherwise.

Per kernel profile, the offsets are applied as a VMM could:

* VM_COUNTER_OFFSET (6.4+): KVM_ARM_SET_COUNTER_OFFSET when CNTVCT == CNTPCT (the ioctl
  sets both counters to one offset); otherwise both counters written by value, at H_d.
* VCPU_OFFSETS (2021 series): enable the CNTVOFF cap, the physical-offset attribute P,
  then the guest's own CNTVOFF (TIMER_OFFSET) on top of it.
* BY_VALUE (QEMU's default on any kernel): the saved counter values written at H_d as
  they are; nothing is credited and guest time stalls for the stop.

Pure: the apply instant comes from the VM's host counter (an injected clock).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from node.core.clock import U64_MASK, ticks_between
from node.core.errors import Busy, InvalidArgument
from node.core.uapi import KVM_ARM_VCPU_TIMER_CTRL, KVM_ARM_VCPU_TIMER_PHYS_OFFSET, Cap, OneReg
from node.core.vm import Vm, check_u64


class RestoreMethod(IntEnum):
    """How the destination puts guest time in place; numbers match proto `MigrationMethod`."""

    BY_VALUE = 1  # saved counter values written back (guest time stalls)
    VCPU_OFFSETS = 2  # 2021 series: physical-offset attribute + CNTVOFF ONE_REG
    VM_COUNTER_OFFSET = 3  # Linux 6.4+: KVM_ARM_SET_COUNTER_OFFSET


@dataclass(frozen=True, slots=True)
class CounterRecord:
    """The guest counters a paused source read, with the instant it read them at."""

    cntvct: int  # guest CNTVCT (TIMER_CNT)
    cntpct: int  # guest CNTPCT (PTIMER_CNT)
    host_counter: int  # source H at the read
    realtime_ns: int  # source CLOCK_REALTIME at the read
    cntfrq_hz: int  # the counter frequency the guest runs at


@dataclass(frozen=True, slots=True)
class Credit:
    """What the destination did with a record, at the instant the offsets took effect."""

    host_counter: int  # destination H at the apply instant
    realtime_ns: int  # destination CLOCK_REALTIME at the same instant
    elapsed_ns: int  # RT_d - RT_s as read (negative: the destination's clock is behind)
    elapsed_ticks: int  # ticks credited to the guest (>= 0; always 0 for BY_VALUE)
    cntvct: int  # guest CNTVCT at the apply instant
    cntpct: int  # guest CNTPCT at the apply instant
    voffset: int  # resulting VM virtual offset
    poffset: int  # resulting VM physical offset
    applied_as: str  # the kernel interface used


def credited_ticks(record: CounterRecord, realtime_ns: int) -> int:
    """Ticks of realtime between the source's read and `realtime_ns`, clamped at 0."""
    return ticks_between(record.realtime_ns, max(realtime_ns, record.realtime_ns), record.cntfrq_hz)


def check_record(vm: Vm, record: CounterRecord, method: int) -> RestoreMethod:
    """Everything `apply_record` needs, checked before anything changes; returns the method."""
    for name in ("cntvct", "cntpct", "host_counter"):
        check_u64(getattr(record, name), name)
    if record.cntfrq_hz != vm.features.cntfrq_hz:
        raise InvalidArgument(
            f"the record's counter runs at {record.cntfrq_hz} Hz, this host's at "
            f"{vm.features.cntfrq_hz} Hz (KVM cannot scale the guest counter)"
        )
    if method not in {int(m) for m in RestoreMethod}:
        raise InvalidArgument(f"unknown restore method {method}")
    method = RestoreMethod(method)
    features = vm.features
    if method is RestoreMethod.VM_COUNTER_OFFSET and not features.has_counter_offset_cap:
        raise InvalidArgument("KVM_ARM_SET_COUNTER_OFFSET is not supported by this kernel")
    if method is RestoreMethod.VCPU_OFFSETS and not features.has_vcpu_offsets:
        raise InvalidArgument(f"capability {int(Cap.ARM_VTIMER_OFFSET)} cannot be enabled on this host")
    if vm.running or any(v.in_run for v in vm.vcpus.values()):
        raise Busy(f"vm {vm.vm_id!r} is running: pause it first")
    if not vm.vcpus:
        vm.vcpu(0)  # raises VcpuNotFound: the counters are per-vCPU registers
    if method is RestoreMethod.VM_COUNTER_OFFSET and record.cntvct != record.cntpct and vm.counter_offset_set:
        # 6.4+ ignores counter writes once the VM-wide offset is set: they could not land.
        raise InvalidArgument("the guest counters differ and this VM's counter offset is already set")
    return method


def apply_record(vm: Vm, record: CounterRecord, method: int) -> Credit:
    """Apply a source's record on this (paused) VM at one instant of this host.

    Preconditions (checked first, nothing changes on failure): the VM is paused, has a
    vCPU, runs at the record's CNTFRQ, and this host's kernel has `method`'s interface.
    """
    method = check_record(vm, record, method)
    h, realtime_ns = vm.counter.sample()
    first = min(vm.vcpus)
    if method is RestoreMethod.BY_VALUE:
        cntvct, cntpct, ticks = record.cntvct, record.cntpct, 0
        writes = [(first, int(OneReg.TIMER_CNT), cntvct)]
        if vm.features.has_ptimer_cnt_write:
            writes.append((first, int(OneReg.PTIMER_CNT), cntpct))
        vm.set_regs(writes, counter_reference=h)
        applied_as = "TIMER_CNT by value (saved at pause)"
    else:
        ticks = credited_ticks(record, realtime_ns)
        cntvct = (record.cntvct + ticks) & U64_MASK
        cntpct = (record.cntpct + ticks) & U64_MASK
        voffset, poffset = (h - cntvct) & U64_MASK, (h - cntpct) & U64_MASK
        if method is RestoreMethod.VM_COUNTER_OFFSET and voffset == poffset:
            vm.set_counter_offset(voffset, 0)
            applied_as = "KVM_ARM_SET_COUNTER_OFFSET"
        elif method is RestoreMethod.VM_COUNTER_OFFSET:
            # The VM-wide ioctl forces CNTVCT == CNTPCT; this guest's counters differ, so
            # both are written by value as they stand at this instant.
            writes = [(first, int(OneReg.TIMER_CNT), cntvct), (first, int(OneReg.PTIMER_CNT), cntpct)]
            vm.set_regs(writes, counter_reference=h)
            applied_as = "TIMER_CNT+PTIMER_CNT at the apply instant (guest counters differ)"
        else:
            # P first (it moves the virtual total with it), then the guest's own CNTVOFF.
            vm.enable_cap(Cap.ARM_VTIMER_OFFSET)
            vm.set_attr(first, KVM_ARM_VCPU_TIMER_CTRL, KVM_ARM_VCPU_TIMER_PHYS_OFFSET, poffset)
            vm.set_one_reg(first, OneReg.TIMER_OFFSET, (voffset - poffset) & U64_MASK)
            applied_as = "KVM_ARM_VCPU_TIMER_PHYS_OFFSET + KVM_REG_ARM_TIMER_OFFSET"
    return Credit(
        host_counter=h,
        realtime_ns=realtime_ns,
        elapsed_ns=realtime_ns - record.realtime_ns,
        elapsed_ticks=ticks,
        cntvct=cntvct,
        cntpct=cntpct,
        voffset=vm.voffset,
        poffset=vm.poffset,
        applied_as=applied_as,
    )
