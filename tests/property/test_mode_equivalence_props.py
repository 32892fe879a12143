"""Hypothesis: every host mode shows the guest the same values; only trap counts differ.

For one API profile, the six hosts ECV {0,1,2} x {VHE, nVHE} start at the same host counter
and replay the same random sequence of guest reads/writes (two vCPUs), clock steps, vCPU
resets and offset settings through the profile's controls (by-value CNT writes, PTIMER_CNT
and the counter-offset ioctl on 6.4+, the physical-offset attribute and CNTVOFF ONE_REG on
the 2021 series). Afterwards every observation (read values, UNDEFINED flags, ONE_REG views,
timer lines) is identical on all six; each access's trap flag follows the spec's rule for
that host at the poffset of that moment; VHE+ECV2 never traps.

CNTVCTSS/CNTPCTSS reads are left out of the random ops (UNDEFINED without ECV by design);
tests/unit/test_traps.py covers them per mode.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from node.core.clock import ManualClock
from node.core.features import ApiProfile, EcvLevel, HostFeatures
from node.core.host import Host
from node.core.uapi import KVM_ARM_VCPU_TIMER_CTRL, KVM_ARM_VCPU_TIMER_PHYS_OFFSET, Cap, OneReg
from node.core.vcpu import TIMER_SYSREGS, AccessKind, GuestOp, SysReg
from node.core.vm import Vm

U64 = 1 << 64
u64s = st.integers(min_value=0, max_value=U64 - 1)
MODES = [(ecv, vhe) for ecv in EcvLevel for vhe in (False, True)]
READABLE = [r for r in SysReg if r not in (SysReg.CNTVCTSS_EL0, SysReg.CNTPCTSS_EL0)]
PHYSICAL_TIMER = {SysReg.CNTP_CTL_EL0, SysReg.CNTP_CVAL_EL0, SysReg.CNTP_TVAL_EL0}


@dataclass(frozen=True)
class Guest:
    index: int  # vCPU
    op: GuestOp  # one read or write


@dataclass(frozen=True)
class Step:
    ticks: int  # host ticks to pass


@dataclass(frozen=True)
class SetReg:
    index: int  # vCPU
    reg: OneReg  # counter ONE_REG
    value: int  # value written


@dataclass(frozen=True)
class CounterOffset:
    value: int  # KVM_ARM_SET_COUNTER_OFFSET


@dataclass(frozen=True)
class PhysOffset:
    value: int  # series KVM_ARM_VCPU_TIMER_PHYS_OFFSET


@dataclass(frozen=True)
class Reset:
    index: int  # vCPU re-initialised


Action = Guest | Step | SetReg | CounterOffset | PhysOffset | Reset

# Values near the counters make CVAL/TVAL hits likely; anything u64 keeps wrap covered.
small = st.integers(0, 5000)
values = st.one_of(small, u64s)
indices = st.sampled_from([0, 1])
guest_ops = st.one_of(
    st.builds(Guest, indices, st.builds(GuestOp, st.just(AccessKind.READ), st.sampled_from(READABLE))),
    st.builds(
        Guest, indices, st.builds(GuestOp, st.just(AccessKind.WRITE), st.sampled_from(list(SysReg)), values)
    ),
)
common_actions: list[st.SearchStrategy[Action]] = [
    guest_ops,
    guest_ops,
    st.builds(Step, st.integers(0, 3000)),
    st.builds(SetReg, indices, st.just(OneReg.TIMER_CNT), values),
    st.builds(Reset, indices),
]


def actions_for(profile: ApiProfile) -> st.SearchStrategy[Action]:
    options = list(common_actions)
    if profile is ApiProfile.VM_COUNTER_OFFSET:
        options.append(st.builds(SetReg, indices, st.just(OneReg.PTIMER_CNT), values))
        options.append(st.builds(CounterOffset, values))
    if profile is ApiProfile.VCPU_OFFSETS:
        options.append(st.builds(PhysOffset, st.one_of(st.just(0), values)))
        options.append(st.builds(SetReg, indices, st.just(OneReg.TIMER_OFFSET), values))
    return st.one_of(options)


def expected_trap(features: HostFeatures, op: GuestOp, poffset: int) -> bool:
    """The spec's rule (§3.3, cases 32-35) for one access at the current poffset."""
    assert op.reg is not None
    if op.kind is AccessKind.WRITE and op.reg not in TIMER_SYSREGS:
        return False  # UNDEFINED, never reaches EL2
    cntpoff = features.vhe and features.ecv == EcvLevel.CNTPOFF
    if op.reg is SysReg.CNTPCT_EL0:
        return poffset != 0 and not cntpoff
    if op.reg in PHYSICAL_TIMER:
        return not features.vhe or (poffset != 0 and not cntpoff)
    return False


def apply(host: Host, vm: Vm, action: Action) -> object:
    """Run one action; return what the guest/VMM observes (trap flags checked separately)."""
    if isinstance(action, Guest):
        poffset = vm.poffset
        run = host.run_vcpu(vm.vm_id, action.index, [action.op])
        (result,) = run.results
        assert result.trapped is expected_trap(host.features, action.op, poffset)
        return ("guest", result.value, result.undefined, run.irq_levels, run.host_counter)
    if isinstance(action, Step):
        return ("step", host.step_clock(action.ticks))
    if isinstance(action, SetReg):
        vm.set_one_reg(action.index, action.reg, action.value)
    elif isinstance(action, CounterOffset):
        vm.set_counter_offset(action.value, 0)
    elif isinstance(action, PhysOffset):
        vm.set_attr(0, KVM_ARM_VCPU_TIMER_CTRL, KVM_ARM_VCPU_TIMER_PHYS_OFFSET, action.value)
    else:
        vm.reset_vcpu(action.index)
    return ("vmm", vm.voffset, vm.poffset)


def views(vm: Vm) -> list[object]:
    out: list[object] = []
    for index in (0, 1):
        regs = vm.reg_list(index)
        out.append((regs, vm.get_regs([(index, r) for r in regs])[0], vm.irq_levels(index)))
    return out


@settings(max_examples=150)
@given(data=st.data(), profile=st.sampled_from(ApiProfile), base=u64s)
def test_host_modes_agree_on_every_guest_visible_value(
    data: st.DataObject, profile: ApiProfile, base: int
) -> None:
    actions = data.draw(st.lists(actions_for(profile), max_size=30), label="actions")
    observations: list[list[object]] = []
    trap_counts: dict[tuple[int, bool], int] = {}
    for ecv, vhe in MODES:
        features = HostFeatures(ecv=ecv, vhe=vhe, api_profile=profile)
        host = Host("n", features, ManualClock(), counter_base=base)
        vm = host.create_vm("vm")
        vm.create_vcpu(0)
        vm.create_vcpu(1)
        if profile is ApiProfile.VCPU_OFFSETS:
            vm.enable_cap(Cap.ARM_VTIMER_OFFSET)
        seen: list[object] = []
        trapped = 0
        for action in actions:
            before = vm.vcpu(0).trap_count + vm.vcpu(1).trap_count
            seen.append(apply(host, vm, action))
            seen.append(views(vm))
            trapped += vm.vcpu(0).trap_count + vm.vcpu(1).trap_count - before
        observations.append(seen)
        trap_counts[(ecv, vhe)] = trapped
    for seen in observations[1:]:
        assert seen == observations[0]
    assert trap_counts[(EcvLevel.CNTPOFF, True)] == 0
    # nVHE never traps less than VHE at the same ECV level (its ptimer is always emulated).
    for ecv in EcvLevel:
        assert trap_counts[(ecv, False)] >= trap_counts[(ecv, True)]
    # Without CNTPOFF, VHE hosts are indistinguishable whatever their ECV level.
    assert trap_counts[(EcvLevel.NI, True)] == trap_counts[(EcvLevel.IMP, True)]
