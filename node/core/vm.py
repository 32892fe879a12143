"""A VM: VM-wide timer offsets and PPIs, its vCPUs, and the KVM ioctls on them.

Offsets follow the upstream model (`struct arch_timer_vm_data`): one VM-wide
`voffset` (total virtual offset from the host counter H) and `poffset`, so
guest CNTVCT = H - voffset and guest CNTPCT = H - poffset (mod 2^64). The
2021 series' per-vCPU controls are expressed in the same terms: its guest
CNTVOFF (TIMER_OFFSET) is voffset - poffset and its physical offset P is poffset,
and since the series broadcast every write to all vCPUs, one VM-wide pair holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from node.core.clock import U64_MASK, HostCounter, u64
from node.core.errors import (
    AlreadyExists,
    BadRequest,
    Busy,
    EmulatorError,
    InvalidArgument,
    NoEntry,
    NoSuchAttr,
    VcpuNotFound,
)
from node.core.features import HostFeatures
from node.core.state import TimerState, VcpuState, VmState
from node.core.timer import (
    DEFAULT_PPI,
    TimerId,
    TimerOffset,
    TimerReg,
    should_fire,
    ticks_until_fire,
    timer_read,
    timer_write,
)
from node.core.traps import TrapConfig, compute_traps
from node.core.uapi import (
    KVM_ARM_VCPU_TIMER_CTRL,
    KVM_ARM_VCPU_TIMER_PHYS_OFFSET,
    KVM_MAX_VCPUS,
    PPI_MAX,
    PPI_MIN,
    Cap,
    OneReg,
    TimerAttr,
    is_arm64_reg_id,
    timer_reg_list,
)
from node.core.vcpu import (
    SELF_SYNC_REGS,
    TIMER_SYSREGS,
    AccessResult,
    SysReg,
    Vcpu,
)
from node.core.workload import Workload, WorkloadSpec, WorkloadState, load_workload, save_workload

# (timer, register) behind each timer ONE_REG id (kvm_arm_timer_get_reg/set_reg).
_TIMER_REGS: dict[int, tuple[TimerId, TimerReg]] = {
    OneReg.TIMER_CTL: (TimerId.VTIMER, TimerReg.CTL),
    OneReg.TIMER_CVAL: (TimerId.VTIMER, TimerReg.CVAL),
    OneReg.TIMER_CNT: (TimerId.VTIMER, TimerReg.CNT),
    OneReg.PTIMER_CTL: (TimerId.PTIMER, TimerReg.CTL),
    OneReg.PTIMER_CVAL: (TimerId.PTIMER, TimerReg.CVAL),
    OneReg.PTIMER_CNT: (TimerId.PTIMER, TimerReg.CNT),
}
_EL1_TIMERS = (TimerId.VTIMER, TimerId.PTIMER)
_COUNTER_REGS = frozenset({OneReg.TIMER_CNT, OneReg.PTIMER_CNT})
_IRQ_ATTRS: dict[int, TimerId] = {
    TimerAttr.IRQ_VTIMER: TimerId.VTIMER,
    TimerAttr.IRQ_PTIMER: TimerId.PTIMER,
    TimerAttr.IRQ_HVTIMER: TimerId.HVTIMER,
    TimerAttr.IRQ_HPTIMER: TimerId.HPTIMER,
}


@dataclass(frozen=True, slots=True)
class IrqLevel:
    """One timer output line."""

    timer_id: TimerId  # which timer
    intid: int  # its PPI
    level: bool  # asserted now


def _fresh_ppis() -> list[int]:
    return [DEFAULT_PPI[t] for t in TimerId]


def check_u64(value: int, what: str = "value") -> int:
    if not 0 <= value <= U64_MASK:
        raise BadRequest(f"{what} {value} is not an unsigned 64-bit value")
    return value


class Vm:
    """One VM on an emulated host. All methods raise only EmulatorError subclasses."""

    def __init__(
        self, vm_id: str, features: HostFeatures, counter: HostCounter, *, userspace_irqchip: bool = False
    ) -> None:
        self.vm_id = vm_id
        self.features = features
        self.counter = counter
        self.userspace_irqchip = userspace_irqchip
        self.voffset = 0  # timer_data.voffset
        self.poffset = 0  # timer_data.poffset
        self.counter_offset_set = False  # KVM_ARCH_FLAG_VM_COUNTER_OFFSET
        self.vtimer_offset_enabled = False  # KVM_CAP_ARM_VTIMER_OFFSET enabled (series)
        # 6.4+ timer_data.ppi[]: the VM-wide PPIs, also given to vCPUs created later.
        # Before 6.4 each vCPU holds its own (Vcpu.ppis); this list then stays at the defaults.
        self.ppis: list[int] = _fresh_ppis()
        self.ppis_frozen = False  # first run done: KVM_ARCH_FLAG_TIMER_PPIS_IMMUTABLE, vGIC initialised
        self.running = False  # resumed by the VMM (vCPUs inside KVM_RUN)
        self.vcpus: dict[int, Vcpu] = {}
        self.workload: Workload | None = None  # the guest's program, when one runs
        # (host counter, lines) whose last interrupt at that instant was spurious: a level
        # the guest left high is not taken again at the same instant (no zero-time storm).
        self._spurious: tuple[int, frozenset[tuple[int, TimerId]]] = (0, frozenset())
        self._traps = compute_traps(features, 0)

    # --- offsets -------------------------------------------------------------

    def offset(self, timer_id: TimerId) -> TimerOffset:
        """The timer's offset: VM part only (no NV per-vCPU part is modelled)."""
        if timer_id in (TimerId.VTIMER, TimerId.HVTIMER):
            return TimerOffset(vm=self.voffset)
        return TimerOffset(vm=self.poffset)

    def _set_offsets(self, voffset: int, poffset: int) -> None:
        self.voffset = u64(voffset)
        if u64(poffset) != self.poffset:
            self.poffset = u64(poffset)
            self._traps = compute_traps(self.features, self.poffset)

    @property
    def traps(self) -> TrapConfig:
        return self._traps

    def cntvct(self, h: int) -> int:
        return (h - self.voffset) & U64_MASK

    def cntpct(self, h: int) -> int:
        return (h - self.poffset) & U64_MASK

    def _timer_now(self, timer_id: TimerId, h: int) -> int:
        return (h - self.offset(timer_id).total()) & U64_MASK

    # --- vCPUs ---------------------------------------------------------------

    def vcpu(self, index: int) -> Vcpu:
        try:
            return self.vcpus[index]
        except KeyError:
            raise VcpuNotFound(f"vm {self.vm_id!r} has no vcpu {index}") from None

    def create_vcpu(self, index: int) -> Vcpu:
        """KVM_CREATE_VCPU + KVM_ARM_VCPU_INIT.

        Unless the VM-wide counter offset was set, every creation resets the
        offsets so the guest virtual counter starts at 0 now (kvm_timer_vcpu_init).
        """
        if not 0 <= index < KVM_MAX_VCPUS:
            raise InvalidArgument(f"vcpu index {index} out of range 0..{KVM_MAX_VCPUS - 1}")
        if index in self.vcpus:
            raise AlreadyExists(f"vcpu {index} already exists in vm {self.vm_id!r}")
        if self.ppis_frozen and not self.userspace_irqchip:
            # kvm_arch_vcpu_precreate(): the vGIC is initialised at first run.
            raise Busy(f"vm {self.vm_id!r} has run: its vGIC is initialised, no new vcpus")
        # Pre-6.4 a new vCPU starts with the default PPIs whatever earlier vCPUs were given.
        vcpu = Vcpu(index, ppis=list(self.ppis) if self.features.has_vm_wide_ppis else _fresh_ppis())
        self.vcpus[index] = vcpu
        if not self.counter_offset_set:
            self._set_offsets(self.counter.read(), 0)
        return vcpu

    def reset_vcpu(self, index: int) -> None:
        self._check_not_in_run(self.vcpu(index))
        self.vcpu(index).reset()

    @staticmethod
    def _check_not_in_run(vcpu: Vcpu) -> None:
        if vcpu.in_run:
            raise Busy(f"vcpu {vcpu.index} is inside KVM_RUN")

    # --- ONE_REG -------------------------------------------------------------

    def reg_list(self, index: int) -> list[int]:
        """KVM_GET_REG_LIST's timer ids, in the kernel's order (spec §2.1 table)."""
        self.vcpu(index)
        return list(self._listed_ids())

    def _listed_ids(self) -> tuple[int, ...]:
        return timer_reg_list(self.features.api_profile, vtimer_offset_enabled=self.vtimer_offset_enabled)

    def _check_reg(self, reg_id: int, *, write: bool) -> None:
        """Raise what KVM would raise for this id, without touching state.

        kvm_arm_get_reg/set_reg (guest.c) first reject an id whose upper half is not
        KVM_REG_ARM64's (-EINVAL), then hand timer ids to the timer code only when
        is_timer_reg() knows them: before 6.4 that is the vtimer trio (+ TIMER_OFFSET
        once the series' cap is on); the PTIMER ids fall through to sys_regs.c, which
        has no accessor for them and answers -ENOENT. Same for GET and SET.
        """
        if not is_arm64_reg_id(reg_id):
            raise InvalidArgument(f"register id {reg_id:#018x} is not a KVM_REG_ARM64 id")
        if reg_id in self._listed_ids():
            return
        raise NoEntry(f"no such register id {reg_id:#018x} on this kernel")

    def get_one_reg(self, index: int, reg_id: int) -> int:
        vcpu = self.vcpu(index)
        self._check_reg(reg_id, write=False)
        return self._read_reg(vcpu, reg_id, self.counter.read())

    def _read_reg(self, vcpu: Vcpu, reg_id: int, h: int) -> int:
        if reg_id == OneReg.TIMER_OFFSET:
            return (self.voffset - self.poffset) & U64_MASK
        timer_id, treg = _TIMER_REGS[reg_id]
        return timer_read(vcpu.timer(timer_id), treg, self._timer_now(timer_id, h))

    def set_one_reg(self, index: int, reg_id: int, value: int) -> None:
        vcpu = self.vcpu(index)
        check_u64(value)
        self._check_reg(reg_id, write=True)
        self._apply_set(vcpu, reg_id, value)

    def _apply_set(self, vcpu: Vcpu, reg_id: int, value: int, h: int | None = None) -> None:
        """One SET_ONE_REG; counter writes use host counter `h` (default: now)."""
        if reg_id == OneReg.TIMER_OFFSET:
            # Series: guest CNTVOFF is relative to the guest physical counter.
            self._set_offsets(self.poffset + value, self.poffset)
            return
        timer_id, treg = _TIMER_REGS[reg_id]
        if treg is not TimerReg.CNT:
            # ONE_REG has no TVAL: `now` is unused by CTL and CVAL writes.
            timer_write(vcpu.timer(timer_id), treg, value, 0)
        elif self.counter_offset_set:
            # 6.4+: once the VM-wide offset is set, counter writes succeed but are ignored.
            return
        elif timer_id is TimerId.VTIMER:
            # By value: voffset = H - value, for every vCPU (last writer wins).
            self._set_offsets((self.counter.read() if h is None else h) - value, self.poffset)
        else:
            self._set_offsets(self.voffset, (self.counter.read() if h is None else h) - value)

    def get_regs(self, entries: Sequence[tuple[int, int]]) -> tuple[list[int], int, int]:
        """Batched GET_ONE_REG, all read at one (host counter, realtime) sample.

        Returns (values, host_counter, realtime_ns): with the sample a VMM can
        turn counter values into offsets exactly.
        """
        # Hot path (tests/bench/node_ops.py): validate every entry in order first, then
        # read with each timer's `now` computed once; values equal _read_reg()'s.
        vcpus = self.vcpus
        targets: list[tuple[Vcpu, int]] = []
        listed = self._listed_ids()
        for index, reg_id in entries:
            vcpu = vcpus.get(index)
            if vcpu is None:
                vcpu = self.vcpu(index)  # raises VcpuNotFound
            if reg_id not in listed:
                self._check_reg(reg_id, write=False)  # raises: EINVAL or ENOENT
            targets.append((vcpu, reg_id))
        h, realtime_ns = self.counter.sample()
        now = {timer_id: self._timer_now(timer_id, h) for timer_id in _EL1_TIMERS}
        cntvoff = (self.voffset - self.poffset) & U64_MASK
        values: list[int] = []
        append = values.append
        for vcpu, reg_id in targets:
            spec = _TIMER_REGS.get(reg_id)
            if spec is None:  # OneReg.TIMER_OFFSET
                append(cntvoff)
                continue
            timer_id, treg = spec
            append(timer_read(vcpu.timers[timer_id], treg, now[timer_id]))
        return values, h, realtime_ns

    def set_regs(self, entries: Sequence[tuple[int, int, int]], counter_reference: int | None = None) -> None:
        """Batched SET_ONE_REG: every entry is validated first; then all are applied in order.

        `counter_reference`: the TIMER_CNT/PTIMER_CNT values are what the guest counters
        should read at that host counter value; each is advanced by the ticks elapsed since
        then before it is written. That is what a VMM running on the host does when it
        computes the value an instant before the ioctl, without the client's round trip.
        """
        if counter_reference is not None:
            check_u64(counter_reference, "counter_reference")
        vcpus = []
        for n, (index, reg_id, value) in enumerate(entries):
            try:
                vcpus.append(self.vcpu(index))
                check_u64(value)
                self._check_reg(reg_id, write=True)
            except EmulatorError as exc:
                raise type(exc)(f"entry {n}: {exc.message}") from None
        # Every counter write of the batch happens at one host counter value.
        h = self.counter.read()
        elapsed = 0 if counter_reference is None else h - counter_reference
        for vcpu, (_, reg_id, value) in zip(vcpus, entries, strict=True):
            if reg_id in _COUNTER_REGS:
                value = (value + elapsed) & U64_MASK
            self._apply_set(vcpu, reg_id, value, h)

    # --- device attributes (group KVM_ARM_VCPU_TIMER_CTRL) -------------------

    def _irq_attr_timer(self, attr: int) -> TimerId:
        timer_id = _IRQ_ATTRS.get(attr)
        if timer_id is None or (timer_id in (TimerId.HVTIMER, TimerId.HPTIMER) and not self.features.nv):
            raise NoSuchAttr(f"no timer attribute {attr}")
        return timer_id

    def _is_phys_offset_attr(self, group: int, attr: int) -> bool:
        return (
            group == KVM_ARM_VCPU_TIMER_CTRL
            and attr == KVM_ARM_VCPU_TIMER_PHYS_OFFSET
            and self.features.has_vcpu_offsets
        )

    def has_attr(self, index: int, group: int, attr: int) -> None:
        self.vcpu(index)
        if self._is_phys_offset_attr(group, attr):
            return
        self._check_group(group)
        self._irq_attr_timer(attr)

    def get_attr(self, index: int, group: int, attr: int) -> int:
        vcpu = self.vcpu(index)
        if self._is_phys_offset_attr(group, attr):
            return self.poffset
        self._check_group(group)
        return vcpu.ppis[self._irq_attr_timer(attr)]

    def set_attr(self, index: int, group: int, attr: int, value: int) -> None:
        """kvm_arm_timer_set_attr(): checks in the kernel's order."""
        vcpu = self.vcpu(index)
        check_u64(value)
        if self._is_phys_offset_attr(group, attr):
            # Series: P = value; the virtual total moves with it (guest CNTVOFF kept).
            self._set_offsets(self.voffset - self.poffset + value, value)
            return
        self._check_group(group)
        if self.userspace_irqchip:
            raise InvalidArgument("timer PPIs need an in-kernel irqchip")
        if not PPI_MIN <= value <= PPI_MAX:
            raise InvalidArgument(f"INTID {value} is not a PPI ({PPI_MIN}..{PPI_MAX})")
        timer_id = self._irq_attr_timer(attr)
        # Spec §2.2: 6.4+ freezes the PPIs VM-wide at the first run; older kernels
        # (5.15, and the series on 5.15-rc1) once this vCPU's timer is enabled.
        frozen = self.ppis_frozen if self.features.has_vm_wide_ppis else vcpu.has_run
        if frozen:
            raise Busy("timer PPIs are immutable once the VM has run")
        if self.features.has_vm_wide_ppis:
            self.ppis[timer_id] = value  # timer_data.ppi[]: later vCPUs see it too
        # Pre-6.4 set_timer_irqs(): written into every vCPU that exists right now.
        for each in self.vcpus.values():
            each.ppis[timer_id] = value

    @staticmethod
    def _check_group(group: int) -> None:
        if group != KVM_ARM_VCPU_TIMER_CTRL:
            raise NoSuchAttr(f"no vcpu attribute group {group}")

    # --- VM ioctls -----------------------------------------------------------

    def enable_cap(self, cap: int, args: Sequence[int] = ()) -> None:
        if cap == Cap.ARM_VTIMER_OFFSET and self.features.has_vcpu_offsets:
            self.vtimer_offset_enabled = True
            return
        raise InvalidArgument(f"capability {cap} cannot be enabled on this host")

    def set_counter_offset(self, counter_offset: int, reserved: int) -> None:
        """KVM_ARM_SET_COUNTER_OFFSET: both counters = H - counter_offset, from now on."""
        check_u64(counter_offset, "counter_offset")
        check_u64(reserved, "reserved")
        if not self.features.has_counter_offset_cap:
            raise InvalidArgument("KVM_ARM_SET_COUNTER_OFFSET is not supported by this kernel")
        if reserved != 0:
            raise InvalidArgument(f"reserved must be 0, got {reserved}")
        if self.running or any(v.in_run for v in self.vcpus.values()):
            raise Busy("a vcpu is running: pause the VM first")
        self._set_offsets(counter_offset, counter_offset)
        self.counter_offset_set = True

    def _first_run_checks(self) -> None:
        """kvm_timer_enable() at first run: PPIs must be distinct; then they freeze."""
        if self.ppis_frozen or self.userspace_irqchip or not self.vcpus:
            return
        timers = list(TimerId) if self.features.nv else list(_EL1_TIMERS)
        seen = {tuple(v.ppis[t] for t in timers) for v in self.vcpus.values()}
        if len(seen) > 1:
            # Pre-6.4 timer_irqs_are_valid(): every vCPU must carry the same PPIs; a vCPU
            # created after SetDeviceAttr kept the defaults.
            raise InvalidArgument(f"vcpus disagree on their timer PPIs: {sorted(seen)}")
        (ppis,) = seen
        if len(set(ppis)) != len(ppis):
            raise InvalidArgument(f"timer PPIs must be distinct, got {list(ppis)}")
        self.ppis_frozen = True

    def pause(self) -> None:
        if self.running and self.workload is not None:
            self.workload.on_pause(self)
        self.running = False

    def resume(self) -> None:
        """The VMM enters KVM_RUN on every vCPU (first-run checks apply)."""
        if self.running:
            return
        if any(v.in_run for v in self.vcpus.values()):
            raise Busy(f"vm {self.vm_id!r} has a vcpu inside a client-driven KVM_RUN")
        self._first_run_checks()
        for vcpu in self.vcpus.values():
            vcpu.has_run = True
        self.running = True
        if self.workload is not None:
            self.workload.on_resume(self)

    # --- guest workload ------------------------------------------------------

    def start_workload(self, spec: WorkloadSpec) -> None:
        """The guest starts its periodic-timer program on every vCPU (VM paused, vCPUs exist)."""
        self._check_workload_change()
        if not self.vcpus:
            raise InvalidArgument(f"vm {self.vm_id!r} has no vcpus to run a workload on")
        self.workload = Workload.start(self, spec)

    def save_workload(
        self, *, live: bool = False, since_reads: dict[int, int] | None = None
    ) -> WorkloadState | None:
        """Copy the guest memory. Paused VM, unless `live` (a pre-copy while the guest runs).

        `since_reads`: per vCPU, leave out the readings an earlier copy already had.
        """
        if self.running and not live:
            raise Busy(f"vm {self.vm_id!r} is running: pause it before saving guest memory")
        return save_workload(self.workload, since_reads) if self.workload is not None else None

    def load_workload(self, state: WorkloadState, *, merge: bool = False) -> None:
        """Install migrated guest memory (VM paused); `merge`: `state` is a delta on top of
        the pre-copy loaded earlier."""
        self._check_workload_change()
        if merge and self.workload is None:
            raise InvalidArgument(f"vm {self.vm_id!r} has no pre-copied workload to merge into")
        self.workload = load_workload(state, self, self.workload if merge else None)

    def _check_workload_change(self) -> None:
        if self.running:
            raise Busy(f"vm {self.vm_id!r} is running: pause it first")

    def ticks_until_next_irq(self, h: int) -> int | None:
        """Host ticks until the workload's next timer interrupt (0 = due now); None if none."""
        if not self.running or self.workload is None:
            return None
        best: int | None = None
        spurious_h, spurious = self._spurious
        for index, w in self.workload.vcpus.items():
            vcpu = self.vcpus[index]
            for timer_id, _ in self.workload.timers(w):
                ctx = vcpu.timers[timer_id]
                ticks = ticks_until_fire(ctx.ctl, ctx.cval, self._timer_now(timer_id, h))
                if ticks == 0 and spurious_h == h and (index, timer_id) in spurious:
                    ticks = 1  # already taken (spuriously) at this instant: next look one tick on
                if ticks is not None and (best is None or ticks < best):
                    best = ticks
        return best

    def deliver_due_irqs(self) -> int:
        """Take every timer interrupt whose line is high at this instant, until none is; returns
        how many.

        Bounded by the deadlines that are really due at the instant of the call: a deadline
        that comes due while the handlers run is left to the next call (the realtime driver
        plans it at once, after serving what else waits), so a period shorter than a handler's
        cost makes the guest late, never the host deaf. A line whose interrupt was spurious
        (the guest's deadline is still ahead, past the counter's wrap) is taken once per
        instant, however long the guest leaves it high.
        """
        if not self.running or self.workload is None:
            return 0
        taken = 0
        h = self.counter.read()
        spurious_h, spurious = self._spurious
        skip = set(spurious) if spurious_h == h else set()
        while True:
            due = [
                (index, timer_id)
                for index, w in self.workload.vcpus.items()
                for timer_id, _ in self.workload.timers(w)
                if (index, timer_id) not in skip
                and should_fire(
                    self.vcpus[index].timers[timer_id].ctl,
                    self.vcpus[index].timers[timer_id].cval,
                    self._timer_now(timer_id, h),
                )
            ]
            if not due:
                self._spurious = (h, frozenset(skip))
                return taken
            for index, timer_id in due:
                if not self.workload.on_irq(self, self.vcpus[index], timer_id):
                    skip.add((index, timer_id))
            taken += len(due)

    # --- KVM_RUN -------------------------------------------------------------

    def enter_run(self, index: int) -> Vcpu:
        """Start a client-driven KVM_RUN on one vCPU (VM must be paused)."""
        vcpu = self.vcpu(index)
        if self.running:
            raise Busy(f"vm {self.vm_id!r} is resumed: its vcpus are already running")
        self._check_not_in_run(vcpu)
        self._first_run_checks()
        vcpu.has_run = True
        vcpu.in_run = True
        return vcpu

    @staticmethod
    def exit_run(vcpu: Vcpu) -> None:
        vcpu.in_run = False

    def guest_read(self, vcpu: Vcpu, reg: SysReg, h: int | None = None) -> AccessResult:
        """MRS of a timer system register by the guest (at host counter `h`, default now)."""
        h = self.counter.read() if h is None else h
        traps = self._traps
        if reg is SysReg.CNTFRQ_EL0:
            return AccessResult(self.features.cntfrq_hz)
        if reg in SELF_SYNC_REGS and self.features.ecv == 0:
            return AccessResult(0, undefined=True)
        if reg in (SysReg.CNTVCT_EL0, SysReg.CNTVCTSS_EL0):
            return self._count(vcpu, self.cntvct(h), traps.trap_cntvct)
        if reg in (SysReg.CNTPCT_EL0, SysReg.CNTPCTSS_EL0):
            return self._count(vcpu, self.cntpct(h), traps.trap_cntpct)
        timer_id, treg = TIMER_SYSREGS[reg]
        value = timer_read(vcpu.timer(timer_id), treg, self._timer_now(timer_id, h))
        return self._count(vcpu, value, self._timer_trapped(timer_id, traps))

    def guest_write(self, vcpu: Vcpu, reg: SysReg, value: int) -> AccessResult:
        """MSR of a timer system register by the guest. Counters and CNTFRQ are UNDEFINED from EL1."""
        check_u64(value)
        if reg not in TIMER_SYSREGS:
            return AccessResult(value, undefined=True)
        timer_id, treg = TIMER_SYSREGS[reg]
        timer_write(vcpu.timer(timer_id), treg, value, self._timer_now(timer_id, self.counter.read()))
        return self._count(vcpu, value, self._timer_trapped(timer_id, self._traps))

    @staticmethod
    def _timer_trapped(timer_id: TimerId, traps: TrapConfig) -> bool:
        return traps.trap_vtimer if timer_id is TimerId.VTIMER else traps.trap_ptimer

    @staticmethod
    def _count(vcpu: Vcpu, value: int, trapped: bool) -> AccessResult:
        if trapped:
            vcpu.trap_count += 1
        return AccessResult(value, trapped)

    def irq_levels(self, index: int, h: int | None = None) -> list[IrqLevel]:
        """Timer output lines of a vCPU (EL1 timers, plus EL2 ones with NV)."""
        vcpu = self.vcpu(index)
        h = self.counter.read() if h is None else h
        timers: Iterable[TimerId] = TimerId if self.features.nv else _EL1_TIMERS
        return [
            IrqLevel(
                t, vcpu.ppis[t], should_fire(vcpu.timers[t].ctl, vcpu.timers[t].cval, self._timer_now(t, h))
            )
            for t in timers
        ]

    # --- snapshot / restore --------------------------------------------------

    def snapshot(self) -> VmState:
        h, realtime_ns = self.counter.sample()
        return VmState(
            vm_id=self.vm_id,
            cntfrq_hz=self.features.cntfrq_hz,
            userspace_irqchip=self.userspace_irqchip,
            voffset=self.voffset,
            poffset=self.poffset,
            counter_offset_set=self.counter_offset_set,
            vtimer_offset_enabled=self.vtimer_offset_enabled,
            ppis=tuple(self._snapshot_ppis()),
            vcpus=tuple(
                VcpuState(v.index, tuple(TimerState(c.timer_id, c.ctl, c.cval) for c in v.timers))
                for v in sorted(self.vcpus.values(), key=lambda v: v.index)
            ),
            host_counter=h,
            realtime_ns=realtime_ns,
        )

    def _snapshot_ppis(self) -> list[int]:
        """The VM's PPIs: VM-wide on 6.4+, else those of its lowest vCPU (they must agree to run)."""
        if self.features.has_vm_wide_ppis or not self.vcpus:
            return self.ppis
        return self.vcpus[min(self.vcpus)].ppis

    @classmethod
    def restore(cls, state: VmState, features: HostFeatures, counter: HostCounter) -> Vm:
        """Recreate a VM exactly as snapshotted (same offsets: no time adjustment here)."""
        if state.cntfrq_hz != features.cntfrq_hz:
            raise InvalidArgument(
                f"snapshot counter runs at {state.cntfrq_hz} Hz, this host at {features.cntfrq_hz} Hz"
            )
        vm = cls(state.vm_id, features, counter, userspace_irqchip=state.userspace_irqchip)
        # Flags of a kernel API this host lacks are dropped: a pre-6.4 kernel never
        # ignores TIMER_CNT writes nor skips the offset reset at vCPU creation.
        vm.counter_offset_set = state.counter_offset_set and features.has_counter_offset_cap
        vm.vtimer_offset_enabled = state.vtimer_offset_enabled and features.has_vcpu_offsets
        if features.has_vm_wide_ppis:
            vm.ppis = list(state.ppis)
        for vs in state.vcpus:
            vcpu = Vcpu(vs.index, ppis=list(state.ppis))
            for ts in vs.timers:
                vcpu.timers[ts.timer_id].ctl = ts.ctl
                vcpu.timers[ts.timer_id].cval = ts.cval
            vm.vcpus[vs.index] = vcpu
        vm._set_offsets(state.voffset, state.poffset)
        return vm
