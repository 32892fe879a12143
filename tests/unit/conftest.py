"""Shared helpers for the core unit tests.

Plain functions (no fixtures): tests import them explicitly, so every test
states its host counter and features in its own body.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from node.core.clock import U64_MASK, ManualClock
from node.core.features import ALL_FEATURE_COMBINATIONS, ApiProfile, HostFeatures
from node.core.host import Host
from node.core.timer import TimerId, read_ctl, store_ctl
from node.core.uapi import KVM_ARM_VCPU_TIMER_CTRL, KVM_ARM_VCPU_TIMER_PHYS_OFFSET, OneReg
from node.core.vcpu import AccessKind, AccessResult, GuestOp, SysReg
from node.core.vm import Vm


def feature_id(features: HostFeatures) -> str:
    """Readable pytest id: ecv2-vhe-vm_counter_offset."""
    mode = "vhe" if features.vhe else "nvhe"
    nv = "-nv" if features.nv else ""
    return f"ecv{int(features.ecv)}-{mode}-{features.api_profile.name.lower()}{nv}"


def feature_params(features: Iterable[HostFeatures]) -> list[object]:
    """pytest.param list with readable ids."""
    return [pytest.param(f, id=feature_id(f)) for f in features]


ALL_FEATURES = feature_params(ALL_FEATURE_COMBINATIONS)
# Profiles that can give the guest a non-zero physical offset (not BY_VALUE).
POFFSET_FEATURES = feature_params(f for f in ALL_FEATURE_COMBINATIONS if f.supports_physical_offset)
# 6.4+ hosts (KVM_ARM_SET_COUNTER_OFFSET, PTIMER_CNT writes).
COUNTER_OFFSET_FEATURES = feature_params(f for f in ALL_FEATURE_COMBINATIONS if f.has_counter_offset_cap)
# Pre-6.4 hosts (5.15 and the 2021 series): no PTIMER ONE_REG ids, per-vCPU PPIs.
PRE_6_4_FEATURES = feature_params(f for f in ALL_FEATURE_COMBINATIONS if not f.has_ptimer_regs)
# Hosts without KVM_ARM_SET_COUNTER_OFFSET.
NO_COUNTER_OFFSET_FEATURES = feature_params(
    f for f in ALL_FEATURE_COMBINATIONS if not f.has_counter_offset_cap
)


def make_host(features: HostFeatures | None = None, *, h: int = 0, node_id: str = "node-a") -> Host:
    """A simulated host whose counter reads exactly `h` now."""
    host = Host(node_id, features or HostFeatures(), ManualClock(), counter_base=h)
    assert host.counter.read() == h
    return host


def advance_to(host: Host, h: int) -> None:
    """Step the simulated host counter to exactly `h` (must not be in the past)."""
    now = host.counter.read()
    assert h >= now, f"cannot go back from {now} to {h}"
    assert host.step_clock(h - now) == h
    assert host.counter.read() == h


def make_vm(
    features: HostFeatures | None = None,
    *,
    h: int = 0,
    vcpus: int = 1,
    userspace_irqchip: bool = False,
    vm_id: str = "vm0",
) -> tuple[Host, Vm]:
    """Host at counter `h` with one VM whose vCPUs 0..vcpus-1 are all created at `h` (voffset = h)."""
    host = make_host(features, h=h)
    vm = host.create_vm(vm_id, userspace_irqchip=userspace_irqchip)
    for index in range(vcpus):
        vm.create_vcpu(index)
    return host, vm


def set_poffset(vm: Vm, poffset: int, index: int = 0) -> None:
    """Give the VM physical offset `poffset` with the profile's own control.

    6.4+: a by-value PTIMER_CNT write (voffset untouched). 2021 series: the
    KVM_ARM_VCPU_TIMER_PHYS_OFFSET attribute (the virtual total moves with it).
    BY_VALUE kernels have no such control.
    """
    profile = vm.features.api_profile
    if profile is ApiProfile.VM_COUNTER_OFFSET:
        vm.set_one_reg(index, OneReg.PTIMER_CNT, (vm.counter.read() - poffset) & U64_MASK)
    elif profile is ApiProfile.VCPU_OFFSETS:
        vm.set_attr(index, KVM_ARM_VCPU_TIMER_CTRL, KVM_ARM_VCPU_TIMER_PHYS_OFFSET, poffset)
    else:
        raise AssertionError("a BY_VALUE kernel has no physical offset")
    assert vm.poffset == poffset


_PTIMER_FIELDS = {OneReg.PTIMER_CTL: "ctl", OneReg.PTIMER_CVAL: "cval", OneReg.PTIMER_CNT: "cnt"}


def get_reg(vm: Vm, index: int, reg_id: int) -> int:
    """GET_ONE_REG where the kernel lists `reg_id`; else, for a PTIMER id before 6.4 (ENOENT
    there), the guest-side value the emulator holds (what the guest's own MRS would see)."""
    if reg_id in vm.reg_list(index) or reg_id not in _PTIMER_FIELDS:
        return vm.get_one_reg(index, reg_id)
    ctx = vm.vcpu(index).timer(TimerId.PTIMER)
    now = vm.cntpct(vm.counter.read())
    field = _PTIMER_FIELDS[OneReg(reg_id)]
    return now if field == "cnt" else ctx.cval if field == "cval" else read_ctl(ctx.ctl, ctx.cval, now)


def set_reg(vm: Vm, index: int, reg_id: int, value: int) -> None:
    """SET_ONE_REG where the kernel lists `reg_id`; else, for PTIMER_CTL/CVAL before 6.4,
    the state the guest itself would program (no VMM can write it there)."""
    if reg_id in vm.reg_list(index) or reg_id not in _PTIMER_FIELDS:
        vm.set_one_reg(index, reg_id, value)
        return
    ctx = vm.vcpu(index).timer(TimerId.PTIMER)
    if reg_id == OneReg.PTIMER_CTL:
        ctx.ctl = store_ctl(value)
    elif reg_id == OneReg.PTIMER_CVAL:
        ctx.cval = value
    else:
        raise AssertionError("before 6.4 nothing can write the guest physical counter")


def rd(reg: SysReg) -> GuestOp:
    return GuestOp(AccessKind.READ, reg)


def wr(reg: SysReg, value: int) -> GuestOp:
    return GuestOp(AccessKind.WRITE, reg, value)


def wait(ticks: int) -> GuestOp:
    return GuestOp(AccessKind.WAIT, value=ticks)


def guest(host: Host, vm: Vm, index: int, *ops: GuestOp) -> tuple[AccessResult, ...]:
    """One KVM_RUN of vCPU `index` executing `ops`."""
    return host.run_vcpu(vm.vm_id, index, ops).results


def guest_values(host: Host, vm: Vm, index: int, *ops: GuestOp) -> list[int]:
    return [r.value for r in guest(host, vm, index, *ops)]


def line(vm: Vm, index: int, timer_id: TimerId) -> bool:
    """Current level of one timer output line of a vCPU."""
    levels = {lvl.timer_id: lvl.level for lvl in vm.irq_levels(index)}
    return levels[timer_id]


def fingerprint(vm: Vm) -> tuple[object, ...]:
    """Everything observable about a VM (valid while the clock does not move)."""
    return (
        vm.snapshot(),
        vm.ppis_frozen,
        vm.running,
        vm.traps,
        tuple(
            (v.index, v.has_run, v.in_run, v.trap_count, tuple(v.ppis))
            for v in sorted(vm.vcpus.values(), key=lambda v: v.index)
        ),
    )


def host_fingerprint(host: Host) -> tuple[object, ...]:
    return (host.counter.read(), tuple((vm_id, fingerprint(vm)) for vm_id, vm in sorted(host.vms.items())))
