"""A guest workload: what the guest kernel does with its timers while the VM runs.

Each vCPU arms its virtual timer (and, when asked, its physical timer) for
periodic deadlines in its own counter domain, takes the timer interrupt,
reads its counters, records how late the interrupt was, and re-arms for the
next deadline (`cval += period`: missed deadlines are caught up, never lost).
It also reads its counters when the VMM stops and continues it (the guest
was executing at that moment), which is what measures a migration's jump.
Deadlines missed while the guest was stopped (or the counter jumped) are all
accounted by the next interrupt, so a jump of any size costs one interrupt.

All of this is guest memory: `WorkloadState` moves with the guest on migration.
Every register access goes through the VM's guest accessors (`Guest`), so traps count.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol

from node.core.clock import U64_MASK, HostCounter, ticks_between
from node.core.errors import InvalidArgument
from node.core.features import HostFeatures
from node.core.timer import CTL_ENABLE, TimerId
from node.core.vcpu import AccessResult, SysReg, Vcpu


class Guest(Protocol):
    """What a workload needs of its VM (node.core.vm.Vm): the guest's view of its vCPUs and
    their timer registers, through the accessors that count traps. The workload never sees
    offsets, traps or snapshots, and the core has no Vm <-> workload import cycle."""

    @property
    def vm_id(self) -> str: ...  # for messages

    @property
    def features(self) -> HostFeatures: ...  # cntfrq_hz

    @property
    def counter(self) -> HostCounter: ...  # one (host counter, realtime) sample per reading

    @property
    def vcpus(self) -> dict[int, Vcpu]: ...  # by index

    def vcpu(self, index: int) -> Vcpu: ...

    def guest_read(self, vcpu: Vcpu, reg: SysReg, h: int | None = None) -> AccessResult: ...  # MRS

    def guest_write(self, vcpu: Vcpu, reg: SysReg, value: int) -> AccessResult: ...  # MSR


MAX_SAMPLES = 256  # readings kept per vCPU (a ring: the newest)
MIN_PERIOD_TICKS = 100  # shorter periods would only measure the emulator


class SampleCause(IntEnum):
    """Why the guest read its counters; numbers match proto `SampleCause`."""

    START = 1  # workload armed its timers
    VTIMER_IRQ = 2  # virtual timer interrupt
    PTIMER_IRQ = 3  # physical timer interrupt
    PAUSE = 4  # last instruction before the VMM stopped the VM
    RESUME = 5  # first instruction after the VMM continued it


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """What the guest runs."""

    period_ticks: int  # timer period in counter ticks
    use_ptimer: bool = False  # also arm the physical timer

    def __post_init__(self) -> None:
        if not MIN_PERIOD_TICKS <= self.period_ticks <= U64_MASK >> 1:
            raise InvalidArgument(f"period_ticks must be >= {MIN_PERIOD_TICKS}, got {self.period_ticks}")


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of both counters, with the observer's realtime."""

    cntvct: int  # guest virtual counter
    cntpct: int  # guest physical counter
    realtime_ns: int  # host CLOCK_REALTIME at the reading (observer's view)
    cause: SampleCause  # why the guest read


def signed64(value: int) -> int:
    value &= U64_MASK
    return value - (1 << 64) if value >> 63 else value


@dataclass(slots=True)
class TimerStats:
    """One periodic timer of one vCPU, in that timer's counter domain."""

    first_deadline: int  # first CVAL the guest programmed
    next_deadline: int  # CVAL currently programmed
    received: int = 0  # interrupts taken
    max_lateness_ticks: int = 0  # worst (taken - deadline)
    total_lateness_ticks: int = 0  # sum, for the mean

    def expected(self, now: int, period: int) -> int:
        """Deadlines that have passed by guest time `now` (modulo 2^64: across a wrap too)."""
        passed = signed64(now - self.first_deadline)
        return 0 if passed < 0 else passed // period + 1


@dataclass(slots=True)
class VcpuWorkload:
    """Guest-side bookkeeping of one vCPU."""

    index: int  # vCPU index
    vtimer: TimerStats  # virtual timer
    ptimer: TimerStats | None  # physical timer, when used
    reads: int = 0  # counter readings taken
    last_cntvct: int | None = None  # previous virtual reading
    last_cntpct: int | None = None  # previous physical reading
    min_step_v: int | None = None  # smallest signed step between virtual readings
    min_step_p: int | None = None  # smallest signed step between physical readings
    pause_sample: Sample | None = None  # reading taken when last stopped
    last_jump_error_ticks: int | None = None  # (counter jump - real time) over the last stop
    last_stop_ns: int | None = None  # realtime the guest spent stopped, last time
    samples: deque[Sample] = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))


@dataclass(slots=True)
class Workload:
    """The workload of one VM."""

    spec: WorkloadSpec  # configuration
    cntfrq_hz: int  # the frequency the guest calibrated against
    vcpus: dict[int, VcpuWorkload]  # by vCPU index

    @classmethod
    def start(cls, vm: Guest, spec: WorkloadSpec) -> Workload:
        """The guest arms its timers on every vCPU."""
        wl = cls(spec, vm.features.cntfrq_hz, {})
        for index, vcpu in sorted(vm.vcpus.items()):
            cntvct = vm.guest_read(vcpu, SysReg.CNTVCT_EL0).value
            vstats = TimerStats((cntvct + spec.period_ticks) & U64_MASK, 0)
            vstats.next_deadline = vstats.first_deadline
            _arm(vm, vcpu, TimerId.VTIMER, vstats.next_deadline, cntvct)
            pstats = None
            if spec.use_ptimer:
                cntpct = vm.guest_read(vcpu, SysReg.CNTPCT_EL0).value
                pstats = TimerStats((cntpct + spec.period_ticks) & U64_MASK, 0)
                pstats.next_deadline = pstats.first_deadline
                _arm(vm, vcpu, TimerId.PTIMER, pstats.next_deadline, cntpct)
            wl.vcpus[index] = VcpuWorkload(index, vstats, pstats)
            wl.read_counters(vm, vcpu, SampleCause.START)
        return wl

    def read_counters(self, vm: Guest, vcpu: Vcpu, cause: SampleCause) -> Sample:
        """The guest reads CNTVCT and CNTPCT; the reading is recorded with the observer's realtime."""
        w = self.vcpus[vcpu.index]
        # One instant for both reads and the observer's realtime (the machine's, without the
        # host's deliberate skew): scheduling noise cannot read as a clock error.
        h, realtime_ns = vm.counter.reference_sample()
        cntvct = vm.guest_read(vcpu, SysReg.CNTVCT_EL0, h).value
        cntpct = vm.guest_read(vcpu, SysReg.CNTPCT_EL0, h).value
        sample = Sample(cntvct, cntpct, realtime_ns, cause)
        if w.last_cntvct is not None:
            step = signed64(cntvct - w.last_cntvct)
            w.min_step_v = step if w.min_step_v is None else min(w.min_step_v, step)
        if w.last_cntpct is not None:
            step = signed64(cntpct - w.last_cntpct)
            w.min_step_p = step if w.min_step_p is None else min(w.min_step_p, step)
        w.last_cntvct, w.last_cntpct = cntvct, cntpct
        w.reads += 1
        w.samples.append(sample)
        return sample

    def on_pause(self, vm: Guest) -> None:
        for index, w in self.vcpus.items():
            w.pause_sample = self.read_counters(vm, vm.vcpu(index), SampleCause.PAUSE)

    def on_resume(self, vm: Guest) -> None:
        """First reading after a stop: the counter jump against the real time that passed."""
        for index, w in self.vcpus.items():
            before = w.pause_sample
            after = self.read_counters(vm, vm.vcpu(index), SampleCause.RESUME)
            if before is None:
                continue
            stop_ns = after.realtime_ns - before.realtime_ns
            # Tick boundaries of real time crossed (telescopes with the counter's own grid).
            ideal_ticks = ticks_between(before.realtime_ns, after.realtime_ns, self.cntfrq_hz)
            w.last_jump_error_ticks = signed64(after.cntvct - before.cntvct) - ideal_ticks
            w.last_stop_ns = stop_ns
            w.pause_sample = None

    def timers(self, w: VcpuWorkload) -> list[tuple[TimerId, TimerStats]]:
        out = [(TimerId.VTIMER, w.vtimer)]
        if w.ptimer is not None:
            out.append((TimerId.PTIMER, w.ptimer))
        return out

    def on_irq(self, vm: Guest, vcpu: Vcpu, timer_id: TimerId) -> bool:
        """Interrupt handler: read the counter, account lateness, re-arm for the next period.

        Returns False for a spurious interrupt: the comparator fired although the guest's
        deadline, counted modulo 2^64, is still ahead (it lies beyond the counter's wrap).
        The guest then only re-arms (see `comparator_value`); nothing is counted.
        """
        w = self.vcpus[vcpu.index]
        stats = w.vtimer if timer_id is TimerId.VTIMER else w.ptimer
        assert stats is not None
        cause = SampleCause.VTIMER_IRQ if timer_id is TimerId.VTIMER else SampleCause.PTIMER_IRQ
        sample = self.read_counters(vm, vcpu, cause)
        now = sample.cntvct if timer_id is TimerId.VTIMER else sample.cntpct
        reg = SysReg.CNTV_CVAL_EL0 if timer_id is TimerId.VTIMER else SysReg.CNTP_CVAL_EL0
        lateness = signed64(now - stats.next_deadline)
        if lateness < 0:
            vm.guest_write(vcpu, reg, comparator_value(stats.next_deadline, now))
            return False
        # Every deadline passed by now is accounted in this one interrupt (a tick handler
        # catching up, as Linux's does): a counter that jumped far ahead costs one interrupt,
        # not one per missed period. Lateness of deadline j is lateness - j * period.
        period = self.spec.period_ticks
        due = lateness // period + 1
        stats.received += due
        stats.max_lateness_ticks = max(stats.max_lateness_ticks, lateness)
        stats.total_lateness_ticks += due * lateness - period * due * (due - 1) // 2
        stats.next_deadline = (stats.next_deadline + due * period) & U64_MASK
        vm.guest_write(vcpu, reg, comparator_value(stats.next_deadline, now))
        return True


def comparator_value(deadline: int, now: int) -> int:
    """The CVAL a wrap-aware guest programs for `deadline` at counter `now` (both mod 2^64).

    The comparator fires while now >= CVAL, unsigned (DDI0487 D11.2.4), so a deadline
    past the counter's wrap cannot be expressed before the wrap: CVAL = deadline would
    fire at once and, re-armed, forever (the StepClock spin). Like clockevents clamping
    a delta to the device's range, the guest then arms for the last tick before the
    wrap (U64 max) and, on that spurious interrupt, programs the real deadline: the
    line stays high for that one tick only. A deadline already due fires at once.
    """
    if signed64(deadline - now) <= 0:
        return min(deadline, now)
    return deadline if deadline >= now or now == U64_MASK else U64_MASK


def _arm(vm: Guest, vcpu: Vcpu, timer_id: TimerId, deadline: int, now: int) -> None:
    cval, ctl = (
        (SysReg.CNTV_CVAL_EL0, SysReg.CNTV_CTL_EL0)
        if timer_id is TimerId.VTIMER
        else (SysReg.CNTP_CVAL_EL0, SysReg.CNTP_CTL_EL0)
    )
    vm.guest_write(vcpu, cval, comparator_value(deadline, now))
    vm.guest_write(vcpu, ctl, CTL_ENABLE)


@dataclass(frozen=True, slots=True)
class WorkloadState:
    """Frozen copy of a Workload (guest memory) for migration."""

    spec: WorkloadSpec  # configuration
    cntfrq_hz: int  # calibration frequency
    vcpus: tuple[VcpuWorkloadState, ...]  # by index


@dataclass(frozen=True, slots=True)
class VcpuWorkloadState:
    """Frozen copy of a VcpuWorkload."""

    index: int
    vtimer: tuple[int, int, int, int, int]  # TimerStats fields in order
    ptimer: tuple[int, int, int, int, int] | None
    reads: int
    last_cntvct: int | None
    last_cntpct: int | None
    min_step_v: int | None
    min_step_p: int | None
    pause_sample: Sample | None
    last_jump_error_ticks: int | None
    last_stop_ns: int | None
    samples: tuple[Sample, ...]


def _stats_tuple(s: TimerStats) -> tuple[int, int, int, int, int]:
    return (s.first_deadline, s.next_deadline, s.received, s.max_lateness_ticks, s.total_lateness_ticks)


def _recent(w: VcpuWorkload, since_reads: int | None) -> tuple[Sample, ...]:
    """The vCPU's readings numbered >= since_reads (all of the ring when None)."""
    if since_reads is None:
        return tuple(w.samples)
    newer = max(0, w.reads - since_reads)
    return tuple(w.samples)[-newer:] if newer else ()


def save_workload(wl: Workload, since_reads: dict[int, int] | None = None) -> WorkloadState:
    """Copy of the guest memory; with `since_reads` (per vCPU), only the readings taken
    after that many reads (a pre-copy delta: everything else is complete)."""
    since = since_reads or {}
    return WorkloadState(
        wl.spec,
        wl.cntfrq_hz,
        tuple(
            VcpuWorkloadState(
                w.index,
                _stats_tuple(w.vtimer),
                _stats_tuple(w.ptimer) if w.ptimer else None,
                w.reads,
                w.last_cntvct,
                w.last_cntpct,
                w.min_step_v,
                w.min_step_p,
                w.pause_sample,
                w.last_jump_error_ticks,
                w.last_stop_ns,
                _recent(w, since.get(w.index) if since_reads is not None else None),
            )
            for w in sorted(wl.vcpus.values(), key=lambda w: w.index)
        ),
    )


def load_workload(state: WorkloadState, vm: Guest, base: Workload | None = None) -> Workload:
    """Recreate a workload in `vm` (whose vCPUs must match) from migrated guest memory.

    With `base` (an earlier pre-copy), `state` is a delta: its readings are appended to
    the base's and every other field is taken from `state`.
    """
    if state.cntfrq_hz != vm.features.cntfrq_hz:
        raise InvalidArgument(
            f"guest calibrated at {state.cntfrq_hz} Hz cannot run on a {vm.features.cntfrq_hz} Hz host"
        )
    missing = sorted({v.index for v in state.vcpus} - set(vm.vcpus))
    if missing:
        raise InvalidArgument(f"workload needs vcpus {missing} that vm {vm.vm_id!r} lacks")
    vcpus = {}
    for v in state.vcpus:
        w = VcpuWorkload(v.index, TimerStats(*v.vtimer), TimerStats(*v.ptimer) if v.ptimer else None)
        w.reads, w.last_cntvct, w.last_cntpct = v.reads, v.last_cntvct, v.last_cntpct
        w.min_step_v, w.min_step_p, w.pause_sample = v.min_step_v, v.min_step_p, v.pause_sample
        w.last_jump_error_ticks, w.last_stop_ns = v.last_jump_error_ticks, v.last_stop_ns
        if base is not None and v.index in base.vcpus:
            w.samples.extend(base.vcpus[v.index].samples)
        w.samples.extend(v.samples)
        vcpus[v.index] = w
    return Workload(state.spec, state.cntfrq_hz, vcpus)
